#!/usr/bin/env bash
# Paper Table 3 (PAPER.md §4.2, §6.3): CIFAR10 conditional model, DDIM 100-step sampling, forget bird (2)
# + ship (8) at once: Unscrubbed, Retrain, Finetune, NegGrad, BlindSpot, EraseDiff.
# (Per-class FID and weight distance to Retrain: the evaluation issue.)
# Expected run time on one A100-class GPU: Unscrubbed (or set BASE=<run dir or converted checkpoint>) and
# Retrain ~2-3 days each, BlindSpot proxy ~1 day, each unlearning run minutes.
# GPU memory: ~6 GB at batch 128.
# SMOKE=1 runs the same pipeline on tiny digits configs on CPU in about a minute (the tests do this).
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
OUT=${OUT:-results/cifar10_ddim_bird_ship}
if [ "${SMOKE:-0}" = 1 ]; then
  OUT=${OUT}_smoke
  cfg() { echo "DDPM/configs/digits/smoke/$1.yaml"; }
else
  cfg() { if [ "$1" = pretrain ]; then echo DDPM/configs/cifar10/pretrain.yaml; else echo "DDPM/configs/cifar10_ddim/$1.yaml"; fi; }
fi

BASE=${BASE:-$OUT/base}
done_or "$BASE" || [ -f "$BASE/conversion.json" ] || \
  $PY -m erasediff train --config "$(cfg pretrain)" "${SETS[@]}" --seed $SEED --output-dir "$BASE"
done_or "$OUT/retrain" || $PY -m erasediff train --config "$(cfg retrain)" "${SETS[@]}" --seed $SEED --output-dir "$OUT/retrain"
done_or "$OUT/blindspot_proxy" || $PY -m erasediff train --config "$(cfg blindspot_proxy)" "${SETS[@]}" --seed $SEED \
    --output-dir "$OUT/blindspot_proxy"
for m in erasediff finetune neggrad blindspot; do
  case $m in
    blindspot) INPUT=(--set method.proxy="$OUT/blindspot_proxy") ;;
    *) INPUT=() ;;
  esac
  done_or "$OUT/$m" || $PY -m erasediff unlearn --config "$(cfg $m)" "${SETS[@]}" "${INPUT[@]}" --seed $SEED \
      --set model.pretrained="$BASE" --output-dir "$OUT/$m"
done
echo "wrote $OUT/{retrain,blindspot_proxy,erasediff,finetune,neggrad,blindspot} (model_ema/ of each)"
