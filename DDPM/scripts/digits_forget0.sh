#!/usr/bin/env bash
# Digits mini-reproduction of the paper's DDPM comparison (Tables 1-3 layout, docs/experiments.md):
# forget digit 0 with every method on scikit-learn digits, offline, and evaluate each with the same
# sampling noise (p_f, entropy_f, acc_remain, fd_remain).
# Expected run time: ~35 min on 2 CPU cores (no GPU needed); GPU memory: < 1 GB if run on a GPU.
# SMOKE=1 runs the same pipeline on tiny configs in about a minute (the tests do this).
# Finished stages are reused on a second run (their run directory is COMPLETE); interrupted ones resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=DDPM/configs/digits
OUT=${OUT:-results/digits_forget0}
if [ "${SMOKE:-0}" = 1 ]; then CFG=DDPM/configs/digits/smoke; OUT=${OUT}_smoke; fi

# 1. Unscrubbed model, evaluation judge
done_or "$OUT/base" || $PY -m erasediff train --config $CFG/pretrain.yaml "${SETS[@]}" --seed $SEED --output-dir "$OUT/base" $(resume_of "$OUT/base")
done_or "$OUT/classifier/classifier.json" || $PY -m erasediff train-classifier --config $CFG/erasediff.yaml --output-dir "$OUT/classifier"
# 2. Retrain (from scratch on D_r)
cfg() { echo "$CFG/$1.yaml"; }
train_all cfg "$OUT" retrain
# 3. Unlearning, every method from the same Unscrubbed model, each after what it reads (BlindSpot's proxy,
#    SA's Fisher, SalUn's mask: `precompute`)
unlearn_all cfg "$OUT/base" "$OUT" erasediff erasediff_gr so finetune neggrad blindspot selective_amnesia salun
# 4. Evaluation of all of them in one process, on the same noise, and the table
evaluate_all $CFG/erasediff.yaml "$OUT/classifier" "" "$OUT" \
    base retrain erasediff erasediff_gr so finetune neggrad blindspot selective_amnesia salun
$PY -m erasediff report --layout digits_forget0 --results "$OUT"
