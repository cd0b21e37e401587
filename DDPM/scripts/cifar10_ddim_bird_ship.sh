#!/usr/bin/env bash
# Paper Table 3 (docs/experiments.md "Table 3"): CIFAR10 conditional model, DDIM 100-step sampling, forget bird (2)
# + ship (8) at once: Unscrubbed, Retrain, Finetune, NegGrad, BlindSpot, EraseDiff.
# Then SA's ResNet34 judge (or CLASSIFIER=<dir>), per-class FID on 5K images per class, the forget rate
# and the weight distance to Retrain for every model, printed by `report --layout table3`.
# Expected run time on one A100-class GPU: Unscrubbed (or set BASE=<run dir or converted checkpoint>) and
# Retrain ~2-3 days each, BlindSpot proxy ~1 day, each unlearning run minutes, the judge ~1 h,
# sampling 50K images per model with 100 DDIM steps ~20 min.
# GPU memory: ~6 GB at batch 128.
# SMOKE=1 runs the same pipeline on tiny digits configs on CPU in about a minute (the tests do this).
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
OUT=${OUT:-results/cifar10_ddim_bird_ship}
if [ "${SMOKE:-0}" = 1 ]; then
  OUT=${OUT}_smoke
  cfg() { if [ "$1" = eval ]; then echo DDPM/configs/digits/smoke/eval_table3.yaml; else echo "DDPM/configs/digits/smoke/$1.yaml"; fi; }
else
  cfg() {
    case $1 in pretrain) echo DDPM/configs/cifar10/pretrain.yaml ;; eval) echo DDPM/configs/cifar10_ddim/erasediff.yaml ;;
      *) echo "DDPM/configs/cifar10_ddim/$1.yaml" ;; esac
  }
fi
CLASSIFIER=${CLASSIFIER:-$OUT/classifier}

BASE=${BASE:-$OUT/base}
done_or "$BASE" || [ -f "$BASE/conversion.json" ] || \
  $PY -m erasediff train --config "$(cfg pretrain)" "${SETS[@]}" --seed $SEED --output-dir "$BASE" $(resume_of "$BASE")
train_all cfg "$OUT" retrain
unlearn_all cfg "$BASE" "$OUT" erasediff finetune neggrad blindspot
# the judge, then every model on the same noise in one process (WD to Retrain), then the table
done_or "$CLASSIFIER/classifier.json" || $PY -m erasediff train-classifier --config "$(cfg eval)" --output-dir "$CLASSIFIER"
link_base "$BASE" "$OUT/base"
evaluate_all "$(cfg eval)" "$CLASSIFIER" "$OUT/retrain" "$OUT" base retrain finetune neggrad blindspot erasediff
$PY -m erasediff report --layout table3 --results "$OUT"
