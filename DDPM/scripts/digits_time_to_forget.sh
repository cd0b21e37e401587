#!/usr/bin/env bash
# Time to forget: makes measurable the paper's claim that EraseDiff unlearns much faster than SA (its Table 2
# gives seconds per step and memory, `bench`; this is the time until the class is actually forgotten). For
# digits 0 and 8, from one base model and one judge, each method (EraseDiff, SO, Finetune as the control, SA,
# SalUn, BlindSpot) is precomputed (SA's Fisher, SalUn's mask, BlindSpot's proxy run) and trained, checked
# every 25 steps on a fixed evaluation set (40 images of the digit, 10 of every other; the same noise for every
# check and method), until forget-each's criterion holds (p_f <= 0.1, p_f_in_dist <= 0.05, acc_remain >= 0.9)
# or the step budget ends. Table: steps and process CPU seconds to target (precompute included), ratio to
# EraseDiff (OUT/time_to_forget.md; every check in time_to_forget.json).
# Expected run time: ~1 h on 2 CPU cores for 2 digits x 6 methods at 400 max steps (one single-threaded
# process; CPU time is the measure, so other jobs on the cores change the wall time only). No GPU needed;
# GPU memory: none (CPU time is what it measures). BASE / CLASSIFIER default to the demo's (`make demo`); a
# missing one is trained first. SMOKE=1: tiny configs, its own tiny base and judge, seconds (the tests do this).
# Finished (class, method) cells are reused on a second run; remove OUT/time_to_forget.md to add CLASSES / METHODS.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=DDPM/configs/digits
OUT=${OUT:-results/digits_time_to_forget}
BASE=${BASE:-results/demo/base}
CLASSIFIER=${CLASSIFIER:-results/demo/classifier}
RUN=(--check-every "${CHECK_EVERY:-25}" --max-steps "${MAX_STEPS:-400}")
if [ "${SMOKE:-0}" = 1 ]; then
  CFG=DDPM/configs/digits/smoke; OUT=${OUT}_smoke; BASE=$OUT/base; CLASSIFIER=$OUT/classifier; CLASSES=${CLASSES:-0}
  METHODS=${METHODS:-erasediff finetune blindspot}; RUN=(--check-every 2 --max-steps 4 --eval-forget 4 --eval-per-class 2)
fi
read -ra classes <<< "${CLASSES:-0 8}"
read -ra methods <<< "${METHODS:-}"
# 1. the base model and the judge (the demo's stages 1-2), unless they are there
done_or "$BASE" || $PY -m erasediff train --config $CFG/pretrain.yaml "${SETS[@]}" --seed "$SEED" --output-dir "$BASE" \
    $(resume_of "$BASE")
done_or "$CLASSIFIER/classifier.json" || $PY -m erasediff train-classifier --config $CFG/erasediff.yaml "${SETS[@]}" \
    --output-dir "$CLASSIFIER"
# 2. every (class, method) cell, timed, into one table
if done_or "$OUT/time_to_forget.md"; then
  echo "$OUT/time_to_forget.md is finished: nothing to do (another OUT, or remove it to add classes / methods)"
  exit 0
fi
$PY -m erasediff time-to-forget --config-dir $CFG --base "$BASE" --classifier "$CLASSIFIER" --output-dir "$OUT" \
    --classes "${classes[@]}" ${methods[@]:+--methods "${methods[@]}"} --seed "$SEED" "${RUN[@]}" "${SETS[@]}"
