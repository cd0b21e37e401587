#!/usr/bin/env bash
# Imagenette class forgetting on SD v1.4, forget "tench" (PAPER.md §4.4): the paper's Table 4 (SD v1.4,
# ESD-x, EraseDiff-x; tench accuracy and FID of the remaining classes). Unlearns with EraseDiff-x and
# ESD-x, generates the 1K evaluation images (10 prompts × 100, the official seeds) for SD v1.4 and both
# models, and prints Table 4 next to the paper's numbers (`erasediff imagenette-eval`: ResNet-50 top-1
# accuracy per class, FID of the 9 remaining classes in the paper's 64-d uint8 variant and as standard
# 2048-d FID, CLIP score). Training data and FID reference: IMAGENETTE_DIR = the train/ folder of fast.ai's
# imagenette2 (class folders named by WordNet id; a manifest "an image of a {class}" is written into it);
# without it, SD v1.4 generates a stand-in (100 images per class; NOT the paper's data, and the FID is then
# measured against that stand-in).
# Expected run time (estimate, not measured here): ~2 h on one H100 (3K images at 50 LMS steps; ESD-x
# 1000 steps; EraseDiff-x 60 outer steps), +~40 min for the stand-in data, +~10 min for the evaluation.
# GPU memory (estimate, not measured here): ≈20 GB (cross-attention only trains; batch 16, fp32).
# Finished stages (their manifest.csv / COMPLETE run directory / table JSON exists) are reused on a second run; an
# interrupted image generation resumes where it stopped.
# SMOKE=1 runs everything on a tiny random pipeline on CPU in a few minutes (the tests do this; each
# command pays ~10 s of diffusers/transformers import on 2 cores). Its evaluation passes --offline-smoke:
# tiny RANDOM stand-ins for ResNet-50, Inception and CLIP (nothing is downloaded; the numbers mean nothing).
# Env: SD_PIPELINE (default CompVis/stable-diffusion-v1-4), IMAGENETTE_DIR, OUT, PYTHON, SEED, EXTRA_SET.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=StableDiffusion/configs/imagenette
P=StableDiffusion/prompts
OUT=${OUT:-results/sd_imagenette_tench}
PIPE=${SD_PIPELINE:-CompVis/stable-diffusion-v1-4}
GEN=(); EVAL=()
if [ "${SMOKE:-0}" = 1 ]; then
  CFG=StableDiffusion/configs/smoke; OUT=${OUT}_smoke
  if [ -z "${SD_PIPELINE:-}" ]; then PIPE=$OUT/tiny_pipeline; [ -d "$PIPE" ] || $PY tests/sd_fixtures.py "$PIPE"; fi
  GEN=(--max-per-prompt 2 --steps 2 --height 16 --width 16 --device cpu)
  EVAL=(--offline-smoke --device cpu)
fi
GEN+=(--no-progress)

# 1. Training data: real Imagenette (manifest written next to the images) or an SD-generated stand-in
if [ -n "${IMAGENETTE_DIR:-}" ]; then
  TRAIN=$IMAGENETTE_DIR
  [ -f "$TRAIN/manifest.csv" ] || $PY -m erasediff.data.prompts imagenette-manifest "$TRAIN"
else
  TRAIN=$OUT/data/train
  done_or "$TRAIN/manifest.csv" || \
      $PY -m erasediff generate --pipeline "$PIPE" --prompts $P/imagenette_train.csv --output-dir "$TRAIN" "${GEN[@]}"
fi
DATA=(--set model.pretrained="$PIPE" --set data.root="$TRAIN")
# 2. Unlearning from SD v1.4
for m in erasediff_x esd_x; do
  done_or "$OUT/$m" || $PY -m erasediff unlearn --config $CFG/$m.yaml "${SETS[@]}" "${DATA[@]}" --seed $SEED --output-dir "$OUT/$m" $(resume_of "$OUT/$m")
done
# 3. Evaluation images: "Image of {class}", official seeds, LMS 50 steps, guidance 7.5
for m in sd14 erasediff_x esd_x; do
  MODEL=(); [ $m = sd14 ] || MODEL=(--model "$OUT/$m")
  done_or "$OUT/eval/$m/manifest.csv" || \
      $PY -m erasediff generate --pipeline "$PIPE" "${MODEL[@]}" --prompts $P/imagenette.csv --output-dir "$OUT/eval/$m" "${GEN[@]}"
done
# 4. Table 4: tench accuracy (ResNet-50), FID of the remaining classes against $TRAIN (the paper's 64-d
#    uint8 variant, then standard FID; real statistics cached in $OUT/fid_cache), CLIP score
[ -n "${IMAGENETTE_DIR:-}" ] || echo "note: no IMAGENETTE_DIR: the FID reference is the SD-generated stand-in $TRAIN, not real Imagenette"
for proto in paper standard; do
  done_or "$OUT/table4_$proto.json" && { cat "$OUT/table4_$proto.md"; continue; }
  $PY -m erasediff imagenette-eval sd14="$OUT/eval/sd14" esd_x="$OUT/eval/esd_x" erasediff_x="$OUT/eval/erasediff_x" \
      --prompts $P/imagenette.csv --forget tench --real "$TRAIN" --fid-protocol $proto --clip \
      --cache-dir "$OUT/fid_cache" --output "$OUT/table4_$proto.json" --no-progress "${EVAL[@]}"
done
echo "wrote $OUT/table4_{paper,standard}.json/.md, images in $OUT/eval/<model>/ and models for: erasediff_x esd_x"
