#!/usr/bin/env bash
# Digits mini-reproduction of paper Table 3 (PAPER.md §4.2, §6.3): forget digits 2 and 8 at once (as
# CIFAR10's bird + ship) with Unscrubbed, Retrain, Finetune, NegGrad, BlindSpot, EraseDiff, SA and
# SalUn, then per-class Fréchet distances in the judge's feature space, forgotten-class probability and
# rate, remaining accuracy and the weight distance to Retrain, printed by `report --layout digits_table3`.
# Expected run time: ~35 min on 2 CPU cores (no GPU needed; ~12 min less with BASE/CLASSIFIER reused
# from digits_forget0.sh); GPU memory: < 1 GB if run on a GPU.
# BASE=<run dir> reuses an Unscrubbed digits model, CLASSIFIER=<dir> a trained judge.
# SMOKE=1 runs the same pipeline on tiny configs in about a minute (the tests do this).
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=DDPM/configs/digits_2_8; PRE=DDPM/configs/digits/pretrain.yaml
OUT=${OUT:-results/digits_table3}
if [ "${SMOKE:-0}" = 1 ]; then CFG=DDPM/configs/digits_2_8/smoke; PRE=DDPM/configs/digits/smoke/pretrain.yaml; OUT=${OUT}_smoke; fi
BASE=${BASE:-$OUT/base}; CLASSIFIER=${CLASSIFIER:-$OUT/classifier}

# 1. Unscrubbed model and the judge (all ten digits)
done_or "$BASE" || $PY -m erasediff train --config $PRE "${SETS[@]}" --seed $SEED --output-dir "$BASE"
done_or "$CLASSIFIER/classifier.json" || $PY -m erasediff train-classifier --config $CFG/erasediff.yaml --output-dir "$CLASSIFIER"
# 2. From scratch on D_r: Retrain and the BlindSpot proxy
for m in retrain blindspot_proxy; do
  done_or "$OUT/$m" || $PY -m erasediff train --config $CFG/$m.yaml "${SETS[@]}" --seed $SEED --output-dir "$OUT/$m"
done
# 3. SA's Fisher and SalUn's mask of the Unscrubbed model
done_or "$OUT/fisher.safetensors" || $PY -m erasediff fisher --config $CFG/selective_amnesia.yaml "${SETS[@]}" \
    --set model.pretrained="$BASE" --output "$OUT/fisher.safetensors"
done_or "$OUT/salun_mask.safetensors" || $PY -m erasediff saliency-mask --config $CFG/salun.yaml "${SETS[@]}" \
    --set model.pretrained="$BASE" --output "$OUT/salun_mask.safetensors"
# 4. Unlearning, every method from the same Unscrubbed model
for m in finetune neggrad blindspot erasediff selective_amnesia salun; do
  case $m in
    blindspot) INPUT=(--set method.proxy="$OUT/blindspot_proxy") ;;
    selective_amnesia) INPUT=(--set method.fisher="$OUT/fisher.safetensors") ;;
    salun) INPUT=(--set method.mask="$OUT/salun_mask.safetensors") ;;
    *) INPUT=() ;;
  esac
  done_or "$OUT/$m" || $PY -m erasediff unlearn --config $CFG/$m.yaml "${SETS[@]}" "${INPUT[@]}" --seed $SEED \
      --set model.pretrained="$BASE" --output-dir "$OUT/$m"
done
# 5. Evaluation of all of them in one process, on the same noise, WD to Retrain
link_base "$BASE" "$OUT/base"
TODO=(); for m in base retrain finetune neggrad blindspot erasediff selective_amnesia salun; do
  [ -f "$OUT/$m/eval/metrics.json" ] || TODO+=("$OUT/$m")
done
[ ${#TODO[@]} = 0 ] || $PY -m erasediff evaluate --config $CFG/erasediff.yaml "${SETS[@]}" --classifier "$CLASSIFIER" \
    --reference "$OUT/retrain" --model "${TODO[@]}"
# 6. The table
$PY -m erasediff report --layout digits_table3 --results "$OUT"
