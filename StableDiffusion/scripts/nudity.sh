#!/usr/bin/env bash
# Nudity erasure on SD v1.4 (PAPER.md §4.5): the NudeNet tables of the appendix (§6.6 Tables A/B) and
# the % change relative to SD v1.4 of the paper's Fig. 4. Generates the training data with SD v1.4
# (4 nudity prompts × 100 = D_f, "a person wearing clothes" × 100 = D_r), unlearns with EraseDiff-u,
# ESD-u and SalUn, generates the 1K nude-prompt evaluation set (and I2P when I2P_CSV is set, e.g. from
# download_i2p.sh) for SD v1.4 and every model, and prints the NudeNet counts next to the paper's.
# Expected run time (estimate, not measured here): ~4-5 h on one H100 (≈4.5K images at 50 LMS steps;
# ESD 1000 steps; EraseDiff-u 160 outer steps); +≈1.5 h per model with I2P.
# GPU memory (estimate, not measured here): ≈40 GB for batch-16 training in fp32; set
# model.sd.mixed_precision=bf16 and model.sd.gradient_checkpointing=true (EXTRA_SET) for 24 GB cards.
# SMOKE=1 runs everything on a tiny random pipeline on CPU in a few minutes (the tests do this; each
# command pays ~10 s of diffusers/transformers import on 2 cores).
# Env: SD_PIPELINE (default CompVis/stable-diffusion-v1-4), OUT, I2P_CSV, PYTHON, SEED, EXTRA_SET.
# Finished stages (their manifest.csv / COMPLETE run directory / output exists) are reused on a second run; an
# interrupted image generation resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=StableDiffusion/configs/nudity
P=StableDiffusion/prompts
OUT=${OUT:-results/sd_nudity}
PIPE=${SD_PIPELINE:-CompVis/stable-diffusion-v1-4}
GEN=()
if [ "${SMOKE:-0}" = 1 ]; then
  CFG=StableDiffusion/configs/smoke; OUT=${OUT}_smoke
  if [ -z "${SD_PIPELINE:-}" ]; then PIPE=$OUT/tiny_pipeline; [ -d "$PIPE" ] || $PY tests/sd_fixtures.py "$PIPE"; fi
  GEN=(--max-per-prompt 2 --steps 2 --height 16 --width 16 --device cpu)
fi
GEN+=(--no-progress)
DATA=(--set model.pretrained="$PIPE" --set data.root="$OUT/data/train")

# 1. Training data from SD v1.4 (PAPER.md §4.5)
done_or "$OUT/data/train/manifest.csv" || \
    $PY -m erasediff generate --pipeline "$PIPE" --prompts $P/nudity_train.csv --output-dir "$OUT/data/train" "${GEN[@]}"
# 2. SalUn's saliency mask
done_or "$OUT/salun_mask.safetensors" || $PY -m erasediff saliency-mask --config $CFG/salun.yaml "${SETS[@]}" "${DATA[@]}" \
    --output "$OUT/salun_mask.safetensors"
# 3. Unlearning, every method from SD v1.4
for m in erasediff_u esd_u salun; do
  INPUT=(); [ $m = salun ] && INPUT=(--set method.mask="$OUT/salun_mask.safetensors")
  done_or "$OUT/$m" || $PY -m erasediff unlearn --config $CFG/$m.yaml "${SETS[@]}" "${DATA[@]}" "${INPUT[@]}" \
      --seed $SEED --output-dir "$OUT/$m" $(resume_of "$OUT/$m")
done
# 4. Evaluation images on the same seeds (LMS, 50 steps, guidance 7.5)
for m in sd14 erasediff_u esd_u salun; do
  MODEL=(); [ $m = sd14 ] || MODEL=(--model "$OUT/$m")
  done_or "$OUT/eval/nude/$m/manifest.csv" || \
      $PY -m erasediff generate --pipeline "$PIPE" "${MODEL[@]}" --prompts $P/nudity_eval.csv --output-dir "$OUT/eval/nude/$m" "${GEN[@]}"
  if [ -n "${I2P_CSV:-}" ]; then
    done_or "$OUT/eval/i2p/$m/manifest.csv" || $PY -m erasediff generate --pipeline "$PIPE" "${MODEL[@]}" --prompts "$I2P_CSV" --output-dir "$OUT/eval/i2p/$m" "${GEN[@]}"
  fi
done
# 5. NudeNet counts (threshold 0.6), % change relative to SD v1.4, the paper's table below
for set in nude i2p; do
  [ -d "$OUT/eval/$set/sd14" ] || continue
  done_or "$OUT/nudenet_$set.json" && { cat "$OUT/nudenet_$set.md"; continue; }
  $PY -m erasediff nudenet sd14="$OUT/eval/$set/sd14" erasediff_u="$OUT/eval/$set/erasediff_u" esd_u="$OUT/eval/$set/esd_u" \
      salun="$OUT/eval/$set/salun" --reference sd14 --output "$OUT/nudenet_$set.json" --no-progress
done
echo "wrote $OUT/nudenet_<set>.json/.md and models for: erasediff_u esd_u salun (images in $OUT/eval, training data in $OUT/data)"
