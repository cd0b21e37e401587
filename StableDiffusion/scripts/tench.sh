#!/usr/bin/env bash
# Imagenette class forgetting on SD v1.4, forget "tench" (docs/experiments.md "Table 4"): the paper's Table 4 (SD v1.4,
# ESD-x, EraseDiff-x; tench accuracy and FID of the remaining classes). Unlearns with EraseDiff-x and
# ESD-x, then `evaluate` generates the 1K evaluation images (10 prompts × 100, the official seeds) of SD v1.4
# and both models and scores them (ResNet-50 top-1 accuracy per class, FID of the 9 remaining classes, CLIP
# score), and `report --layout table4` prints Table 4 next to the paper's numbers. The FID protocol is
# EVAL_CONFIG's: by default the paper's 64-d uint8 variant (imagenette/eval_paper_protocol.yaml);
# EVAL_CONFIG=StableDiffusion/configs/imagenette/erasediff_x.yaml gives the standard 2048-d FID (in a new OUT).
# Training data and FID reference: IMAGENETTE_DIR = the train/ folder of fast.ai's imagenette2 (class folders
# named by WordNet id; a manifest "an image of a {class}" is written into it); without it, SD v1.4 generates
# a stand-in (100 images per class; NOT the paper's data, and the FID is then measured against that stand-in).
# Expected run time (estimate, not measured here): ~2 h on one H100 (3K images at 50 LMS steps; ESD-x
# 1000 steps; EraseDiff-x 60 outer steps), +~40 min for the stand-in data, +~10 min for the evaluation.
# GPU memory (estimate, not measured here): ≈20 GB (cross-attention only trains; batch 16, fp32).
# Finished stages (their manifest.csv / COMPLETE run directory / eval/metrics.json exists) are reused on a second
# run; an interrupted image generation resumes where it stopped.
# SMOKE=1 runs everything on CPU in a few minutes on stand-in networks you provide (tests/test_sd_scripts.py
# makes tiny random ones; the numbers mean nothing): SD_PIPELINE (a pipeline folder), CLASSIFIER (a classifier
# folder with 1000 outputs: the judge, whose features also stand in for Inception) and CLIP_MODEL (a CLIP folder).
# Env: SD_PIPELINE (default CompVis/stable-diffusion-v1-4), IMAGENETTE_DIR, CLASSIFIER (default
# evaluate.classifier: resnet50), CLIP_MODEL (default evaluate.clip_model), EVAL_CONFIG, OUT, PYTHON, SEED, EXTRA_SET.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=StableDiffusion/configs/imagenette
P=StableDiffusion/prompts
OUT=${OUT:-results/sd_imagenette_tench}
if [ "${SMOKE:-0}" = 1 ]; then
  : "${SD_PIPELINE:?SMOKE=1 needs SD_PIPELINE, CLASSIFIER and CLIP_MODEL: stand-in networks (see the header)}"
  : "${CLASSIFIER:?SMOKE=1 needs CLASSIFIER: a classifier folder with 1000 outputs (see the header)}"
  : "${CLIP_MODEL:?SMOKE=1 needs CLIP_MODEL: a CLIP folder (see the header)}"
  CFG=StableDiffusion/configs/smoke; OUT=${OUT}_smoke
  EVAL_CONFIG=${EVAL_CONFIG:-StableDiffusion/configs/smoke/eval_table4.yaml}
else
  EVAL_CONFIG=${EVAL_CONFIG:-$CFG/eval_paper_protocol.yaml}
fi
PIPE=${SD_PIPELINE:-CompVis/stable-diffusion-v1-4}
JUDGE=(); [ -z "${CLASSIFIER:-}" ] || JUDGE=(--classifier "$CLASSIFIER")
CLIP=(); [ -z "${CLIP_MODEL:-}" ] || CLIP=(--set evaluate.clip_model="$CLIP_MODEL")

# 1. Training data: real Imagenette (manifest written next to the images) or an SD-generated stand-in
if [ -n "${IMAGENETTE_DIR:-}" ]; then
  TRAIN=$IMAGENETTE_DIR
  [ -f "$TRAIN/manifest.csv" ] || $PY -m erasediff.data.prompts imagenette-manifest "$TRAIN"
else
  TRAIN=$OUT/data/train
  done_or "$TRAIN/manifest.csv" || $PY -m erasediff generate --config $CFG/erasediff_x.yaml "${SETS[@]}" \
      --set model.pretrained="$PIPE" --prompts $P/imagenette_train.csv --output-dir "$TRAIN" --no-progress
fi
DATA=(--set model.pretrained="$PIPE" --set data.root="$TRAIN")
# 2. Unlearning from SD v1.4
for m in erasediff_x esd_x; do
  done_or "$OUT/$m" || $PY -m erasediff unlearn --config $CFG/$m.yaml "${SETS[@]}" "${DATA[@]}" --seed $SEED --output-dir "$OUT/$m" $(resume_of "$OUT/$m")
done
# 3. Evaluation: "Image of {class}" with the official seeds (LMS 50 steps, guidance 7.5) for SD v1.4 ($OUT/sd14/eval)
#    and both models ($OUT/<model>/eval); real-image statistics of the FID cached in $OUT/fid_cache
[ -n "${IMAGENETTE_DIR:-}" ] || echo "note: no IMAGENETTE_DIR: the FID reference is the SD-generated stand-in $TRAIN, not real Imagenette"
EVAL=(--config "$EVAL_CONFIG" "${SETS[@]}" "${DATA[@]}" "${JUDGE[@]}" "${CLIP[@]}" --set evaluate.fid_cache="$OUT/fid_cache" --no-progress)
done_or "$OUT/sd14/eval/metrics.json" || $PY -m erasediff evaluate "${EVAL[@]}" --model "$PIPE" --output-dir "$OUT/sd14/eval"
todo=(); for m in esd_x erasediff_x; do done_or "$OUT/$m/eval/metrics.json" || todo+=("$OUT/$m"); done
[ ${#todo[@]} = 0 ] || $PY -m erasediff evaluate "${EVAL[@]}" --model "${todo[@]}"
# 4. Table 4 next to the paper's numbers
$PY -m erasediff report --layout table4 --results "$OUT"
echo "wrote $OUT/table4.md, evaluations in $OUT/<model>/eval (sd14 esd_x erasediff_x) and models for: erasediff_x esd_x"
