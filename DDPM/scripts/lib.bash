# Shared by the experiment scripts (sourced, not run): run-level settings only, no hyperparameters.
#   PYTHON     interpreter (default: python)       SEED       run seed (default 0)
#   SMOKE=1    tiny configs on CPU                 EXTRA_SET  extra ';'-separated --set items (tests)
PY=${PYTHON:-python}
SEED=${SEED:-0}
IFS=';' read -ra EXTRA <<< "${EXTRA_SET:-}"
SETS=(); for s in "${EXTRA[@]}"; do SETS+=(--set "$s"); done
# a stage is finished when its run directory is COMPLETE (or its output file exists): reuse it
done_or() { [ -f "$1/COMPLETE" ] || [ -f "$1" ]; }
# a run directory left by an interrupted run is continued, never a dead end: prints --resume for it
resume_of() { [ -f "$1/config.resolved.yaml" ] && echo --resume; }
# the Unscrubbed row of a table: OUT/base is BASE itself, or a folder of links to BASE's weights so that
# its evaluation (OUT/base/eval) belongs to this experiment and not to the run BASE came from
link_base() {
  local base=$1 dest=$2 f
  [ "$(realpath -m "$base")" = "$(realpath -m "$dest")" ] && return 0
  mkdir -p "$dest"
  for f in model model_ema metrics.json conversion.json COMPLETE; do
    if [ -e "$base/$f" ] && [ ! -e "$dest/$f" ]; then ln -s "$(realpath "$base/$f")" "$dest/$f"; fi
  done
}
# train_all CFGFN OUT RUN...: each RUN (Retrain) trained from scratch into OUT/RUN with config `$(CFGFN RUN)`
train_all() {
  local cfgfn=$1 out=$2 run; shift 2
  for run in "$@"; do
    done_or "$out/$run" || $PY -m erasediff train --config "$($cfgfn "$run")" "${SETS[@]}" --seed "$SEED" \
        --output-dir "$out/$run" $(resume_of "$out/$run")
  done
}
# unlearn_all CFGFN BASE OUT METHOD...: every method from BASE into OUT/METHOD with config `$(CFGFN METHOD)`:
# `precompute` makes what the method reads (SA's Fisher, SalUn's mask, BlindSpot's proxy) into OUT (the
# artifacts dir), then `unlearn` reads it from there; both get the same config and --set items
unlearn_all() {
  local cfgfn=$1 base=$2 out=$3 m args; shift 3
  for m in "$@"; do
    done_or "$out/$m" && continue
    args=(--config "$($cfgfn "$m")" "${SETS[@]}" --set model.pretrained="$base" --seed "$SEED" --artifacts-dir "$out")
    $PY -m erasediff precompute "${args[@]}"
    $PY -m erasediff unlearn "${args[@]}" --output-dir "$out/$m" $(resume_of "$out/$m")
  done
}
# evaluate_all CONFIG CLASSIFIER REFERENCE OUT RUN...: every OUT/RUN without eval/metrics.json, in one process on the
# same noise (REFERENCE: the Retrain run for the weight distance, or "" for none)
evaluate_all() {
  local config=$1 classifier=$2 reference=$3 out=$4 run todo=() ref=(); shift 4
  for run in "$@"; do [ -f "$out/$run/eval/metrics.json" ] || todo+=("$out/$run"); done
  [ -z "$reference" ] || ref=(--reference "$reference")
  [ ${#todo[@]} = 0 ] || $PY -m erasediff evaluate --config "$config" "${SETS[@]}" --classifier "$classifier" "${ref[@]}" \
      --model "${todo[@]}"
}
