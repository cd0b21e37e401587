# Shared by the experiment scripts (sourced, not run): run-level settings only, no hyperparameters.
#   PYTHON     interpreter (default: python)       SEED       run seed (default 0)
#   SMOKE=1    tiny configs on CPU                 EXTRA_SET  extra ';'-separated --set items (tests)
PY=${PYTHON:-python}
SEED=${SEED:-0}
IFS=';' read -ra EXTRA <<< "${EXTRA_SET:-}"
SETS=(); for s in "${EXTRA[@]}"; do SETS+=(--set "$s"); done
# a stage is finished when its run wrote metrics.json (or its output file exists): reuse it
done_or() { [ -f "$1/metrics.json" ] || [ -f "$1" ]; }
# the Unscrubbed row of a table: OUT/base is BASE itself, or a folder of links to BASE's weights so that
# its evaluation (OUT/base/eval) belongs to this experiment and not to the run BASE came from
link_base() {
  local base=$1 dest=$2 f
  [ "$(realpath -m "$base")" = "$(realpath -m "$dest")" ] && return 0
  mkdir -p "$dest"
  for f in model model_ema metrics.json conversion.json; do
    if [ -e "$base/$f" ] && [ ! -e "$dest/$f" ]; then ln -s "$(realpath "$base/$f")" "$dest/$f"; fi
  done
}
