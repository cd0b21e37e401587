#!/usr/bin/env bash
# Nudity erasure on SD v1.4 (docs/experiments.md "Nudity"): the NudeNet tables of the appendix (Tables A/B) and
# the % change relative to SD v1.4 of the paper's Fig. 4. Generates the training data with SD v1.4
# (4 nudity prompts × 100 = D_f, "a person wearing clothes" × 100 = D_r), unlearns with EraseDiff-u,
# ESD-u and SalUn, generates the 1K nude-prompt evaluation set (and I2P when I2P_CSV is set, e.g. from
# download_i2p.sh) for SD v1.4 and every model, and prints the NudeNet counts next to the paper's.
# Expected run time (estimate, not measured here): ~4-5 h on one H100 (≈4.5K images at 50 LMS steps;
# ESD 1000 steps; EraseDiff-u 160 outer steps); +≈1.5 h per model with I2P.
# GPU memory (estimate, not measured here): ≈40 GB for batch-16 training in fp32; set
# train.mixed_precision=bf16 and model.gradient_checkpointing=true (EXTRA_SET) for 24 GB cards.
# SMOKE=1 runs everything on CPU in a few minutes on a stand-in pipeline you provide as SD_PIPELINE
# (tests/test_sd_scripts.py makes a tiny random one; each command pays ~10 s of imports on 2 cores).
# Env: SD_PIPELINE (default CompVis/stable-diffusion-v1-4), OUT, I2P_CSV, EVAL_CONFIG, PYTHON, SEED, EXTRA_SET.
# Finished stages (their manifest.csv / COMPLETE run directory / eval/metrics.json exists) are reused on a second
# run; an interrupted image generation resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=StableDiffusion/configs/nudity
P=StableDiffusion/prompts
OUT=${OUT:-results/sd_nudity}
if [ "${SMOKE:-0}" = 1 ]; then
  : "${SD_PIPELINE:?SMOKE=1 needs SD_PIPELINE: a stand-in pipeline folder (see the header)}"
  CFG=StableDiffusion/configs/smoke; OUT=${OUT}_smoke
fi
PIPE=${SD_PIPELINE:-CompVis/stable-diffusion-v1-4}
EVAL_CONFIG=${EVAL_CONFIG:-$CFG/erasediff_u.yaml}
DATA=(--set model.pretrained="$PIPE" --set data.root="$OUT/data/train")

# 1. Training data from SD v1.4 (docs/experiments.md "Nudity")
done_or "$OUT/data/train/manifest.csv" || $PY -m erasediff generate --config $CFG/erasediff_u.yaml "${SETS[@]}" \
    --set model.pretrained="$PIPE" --prompts $P/nudity_train.csv --output-dir "$OUT/data/train" --no-progress
# 2. Unlearning, every method from SD v1.4, each after what it reads (SalUn's saliency mask: `precompute`
#    writes it into $OUT, the artifacts dir)
for m in erasediff_u esd_u salun; do
  done_or "$OUT/$m" && continue
  ARGS=(--config $CFG/$m.yaml "${SETS[@]}" "${DATA[@]}" --seed $SEED --artifacts-dir "$OUT")
  $PY -m erasediff precompute "${ARGS[@]}"
  $PY -m erasediff unlearn "${ARGS[@]}" --output-dir "$OUT/$m" $(resume_of "$OUT/$m")
done
# 3. Evaluation: `evaluate` generates the images of the 1K nude prompts on the same seeds (LMS, 50 steps, guidance
#    7.5) for SD v1.4 ($OUT/sd14/eval) and every model ($OUT/<model>/eval) and counts NudeNet's exposed classes
#    (threshold 0.6); `report` prints them next to the paper's with the % change relative to SD v1.4. I2P: $OUT/i2p.
EVAL=(--config "$EVAL_CONFIG" "${SETS[@]}" --set model.pretrained="$PIPE" --no-progress)
done_or "$OUT/sd14/eval/metrics.json" || $PY -m erasediff evaluate "${EVAL[@]}" --model "$PIPE" --output-dir "$OUT/sd14/eval"
todo=(); for m in erasediff_u esd_u salun; do done_or "$OUT/$m/eval/metrics.json" || todo+=("$OUT/$m"); done
[ ${#todo[@]} = 0 ] || $PY -m erasediff evaluate "${EVAL[@]}" --model "${todo[@]}"
$PY -m erasediff report --layout nudity --results "$OUT"
if [ -n "${I2P_CSV:-}" ]; then
  for m in sd14 erasediff_u esd_u salun; do
    MODEL=$OUT/$m; [ $m = sd14 ] && MODEL=$PIPE
    done_or "$OUT/i2p/$m/eval/metrics.json" || $PY -m erasediff evaluate "${EVAL[@]}" --set evaluate.prompts="$I2P_CSV" \
        --model "$MODEL" --output-dir "$OUT/i2p/$m/eval"
  done
  $PY -m erasediff report --layout nudity --results "$OUT/i2p"
fi
echo "wrote $OUT/nudity.md${I2P_CSV:+ and $OUT/i2p/nudity.md}, evaluations in $OUT/<model>/eval and models for: erasediff_u esd_u salun (training data in $OUT/data)"
