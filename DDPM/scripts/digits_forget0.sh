#!/usr/bin/env bash
# Digits mini-reproduction of the paper's DDPM comparison (Tables 1-3 layout, PAPER.md §4.1-4.2):
# forget digit 0 with every method on scikit-learn digits, offline, and evaluate each with the same
# sampling noise (p_f, entropy_f, acc_remain, fd_remain).
# Expected run time: ~35 min on 2 CPU cores (no GPU needed); GPU memory: < 1 GB if run on a GPU.
# SMOKE=1 runs the same pipeline on tiny configs in about a minute (the tests do this).
# Finished stages are reused on a second run (their metrics.json exists).
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=DDPM/configs/digits
OUT=${OUT:-results/digits_forget0}
if [ "${SMOKE:-0}" = 1 ]; then CFG=DDPM/configs/digits/smoke; OUT=${OUT}_smoke; fi

# 1. Unscrubbed model, evaluation judge
done_or "$OUT/base" || $PY -m erasediff train --config $CFG/pretrain.yaml "${SETS[@]}" --seed $SEED --output-dir "$OUT/base"
done_or "$OUT/classifier/classifier.json" || $PY -m erasediff train-classifier --config $CFG/erasediff.yaml --output-dir "$OUT/classifier"
# 2. Retrain (from scratch on D_r) and the BlindSpot proxy (from scratch on D_r, shorter)
done_or "$OUT/retrain" || $PY -m erasediff train --config $CFG/retrain.yaml "${SETS[@]}" --seed $SEED --output-dir "$OUT/retrain"
done_or "$OUT/blindspot_proxy" || $PY -m erasediff train --config $CFG/blindspot_proxy.yaml "${SETS[@]}" --seed $SEED --output-dir "$OUT/blindspot_proxy"
# 3. Files the SA and SalUn runs need
done_or "$OUT/fisher.safetensors" || $PY -m erasediff fisher --config $CFG/selective_amnesia.yaml "${SETS[@]}" \
    --set model.pretrained="$OUT/base" --output "$OUT/fisher.safetensors"
done_or "$OUT/salun_mask.safetensors" || $PY -m erasediff saliency-mask --config $CFG/salun.yaml "${SETS[@]}" \
    --set model.pretrained="$OUT/base" --output "$OUT/salun_mask.safetensors"
# 4. Unlearning, every method from the same Unscrubbed model
for m in erasediff erasediff_gr so finetune neggrad blindspot selective_amnesia salun; do
  case $m in
    blindspot) INPUT=(--set method.proxy="$OUT/blindspot_proxy") ;;
    selective_amnesia) INPUT=(--set method.fisher="$OUT/fisher.safetensors") ;;
    salun) INPUT=(--set method.mask="$OUT/salun_mask.safetensors") ;;
    *) INPUT=() ;;
  esac
  done_or "$OUT/$m" || $PY -m erasediff unlearn --config $CFG/$m.yaml "${SETS[@]}" "${INPUT[@]}" --seed $SEED \
      --set model.pretrained="$OUT/base" --output-dir "$OUT/$m"
done
# 5. Evaluation of all of them in one process, on the same noise, and the table
TODO=(); for m in base retrain erasediff erasediff_gr so finetune neggrad blindspot selective_amnesia salun; do
  [ -f "$OUT/$m/eval/metrics.json" ] || TODO+=("$OUT/$m")
done
[ ${#TODO[@]} = 0 ] || $PY -m erasediff evaluate --config $CFG/erasediff.yaml "${SETS[@]}" --classifier "$OUT/classifier" \
    --model "${TODO[@]}"
$PY -m erasediff report --layout digits_forget0 --results "$OUT"
