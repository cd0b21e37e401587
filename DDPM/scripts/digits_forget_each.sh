#!/usr/bin/env bash
# Forget each digit: no paper table has this; it is the per-class check behind the digits Tables 1-3
# layouts (docs/experiments.md "Forget each class"): every digit 0-9 forgotten on its own from the same
# base model, for seeds 0 and 1 (base model, judge and unlearning seeded together), with EraseDiff, SO,
# Finetune, SA, SalUn and BlindSpot; prints the class x method table (p_f, p_f_in_dist, fd_f, acc_remain,
# fd_remain) with its worst / median / best summary and writes the grid.
# Expected run time: ~2 min per (class, seed, method) on 2 CPU cores: all 120 of them ~4.5 h; CLASSES="0 3"
# SEEDS=0 METHODS=erasediff cuts it to ~5 min. GPU memory: < 1 GB if run on a GPU.
# SMOKE=1 runs the same pipeline on tiny configs for classes 0 and 1, seed 0, in about a minute (the tests do this).
# Finished stages are reused on a second run; interrupted ones resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=DDPM/configs/digits
OUT=${OUT:-results/digits_forget_each}
if [ "${SMOKE:-0}" = 1 ]; then CFG=DDPM/configs/digits/smoke; OUT=${OUT}_smoke; CLASSES=${CLASSES:-0 1}; SEEDS=${SEEDS:-0}; fi
read -ra classes <<< "${CLASSES:-}"
read -ra seeds <<< "${SEEDS:-0 1}"
read -ra methods <<< "${METHODS:-erasediff so finetune selective_amnesia salun blindspot}"
$PY -m erasediff forget-each --config-dir $CFG --output-dir "$OUT" --seeds "${seeds[@]}" --methods "${methods[@]}" \
    ${classes[@]:+--classes "${classes[@]}"} "${SETS[@]}"
