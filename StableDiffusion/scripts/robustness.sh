#!/usr/bin/env bash
# Is it really erased? (docs/robustness.md): the robustness table (`report --layout robustness`: methods × concepts,
# pre-attack ASR, ASR of UnlearnDiffAtk, Ring-A-Bell and textual inversion, COCO FID and CLIP score) next to the
# published numbers (UnlearnDiffAtk's leaderboard, the paper's v4 COCO FID / CLIP). Every SD model of the project is
# attacked: nudity (SD v1.4, EraseDiff-u, ESD-u, SalUn from nudity.sh) and the Imagenette object tench (SD v1.4,
# EraseDiff-x, ESD-x from tench.sh); the models are made by those scripts when their folders lack them.
# Expected run time (estimate, not measured here: no GPU was available to the project): ~1-2 h per model and
# concept on one H100 at the shipped prompt sets (24 nudity / 12 tench prompts): UnlearnDiffAtk up to 2,000 UNet
# forward+backward passes and 50 generations per prompt, Ring-A-Bell 3,000 generations of 200 text-encoder
# passes per prompt, textual inversion one training run per model; + the models' own scripts if they must run.
# GPU memory (estimate): ≈12 GB (SD v1.4 in fp32, one 512 px image with gradients to the text side).
# Utility: COCO_CSV (captions CSV from `python -m erasediff.data.coco`) and COCO_STATS (precomputed COCO Inception
# statistics .npz) or COCO_REAL (a folder of COCO images) add the COCO FID / CLIP columns.
# Finished stages (an attack folder with metrics.json, an evaluation with metrics.json) are reused on a second run;
# an interrupted attack resumes at its next prompt.
# SMOKE=1 runs everything on CPU in a few minutes on stand-in networks you provide (tests/test_robustness_script.py
# makes tiny random ones; the numbers mean nothing): SD_PIPELINE, CLASSIFIER (1000 outputs: the tench judge),
# CLIP_MODEL, as nudity.sh / tench.sh.
# Env: SD_PIPELINE, NUDITY_MODELS (default results/sd_nudity: nudity.sh's OUT), TENCH_MODELS (default
# results/sd_imagenette_tench: tench.sh's OUT), CLASSIFIER, CLIP_MODEL, COCO_CSV, COCO_STATS, COCO_REAL, OUT,
# PYTHON, SEED, EXTRA_SET.
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
CFG=StableDiffusion/configs
ATTACKS=$CFG/attacks
OUT=${OUT:-results/sd_robustness}
NUDITY_MODELS=${NUDITY_MODELS:-results/sd_nudity}
TENCH_MODELS=${TENCH_MODELS:-results/sd_imagenette_tench}
if [ "${SMOKE:-0}" = 1 ]; then
  : "${SD_PIPELINE:?SMOKE=1 needs SD_PIPELINE, CLASSIFIER and CLIP_MODEL: stand-in networks (see the header)}"
  : "${CLASSIFIER:?SMOKE=1 needs CLASSIFIER: a classifier folder with 1000 outputs (see the header)}"
  : "${CLIP_MODEL:?SMOKE=1 needs CLIP_MODEL: a CLIP folder (see the header)}"
  ATTACKS=$CFG/smoke/attacks; OUT=${OUT}_smoke
  NUDITY_CFG=$CFG/smoke/erasediff_u.yaml; TENCH_CFG=$CFG/smoke/erasediff_x.yaml; COCO_CFG=$CFG/smoke/eval_coco.yaml
  MODELS_N=${NUDITY_MODELS}_smoke; MODELS_T=${TENCH_MODELS}_smoke  # where the scripts put their SMOKE runs
else
  NUDITY_CFG=$CFG/nudity/erasediff_u.yaml; TENCH_CFG=$CFG/imagenette/erasediff_x.yaml; COCO_CFG=$CFG/nudity/eval_coco.yaml
  MODELS_N=$NUDITY_MODELS; MODELS_T=$TENCH_MODELS
fi
PIPE=${SD_PIPELINE:-CompVis/stable-diffusion-v1-4}
JUDGE=(); [ -z "${CLASSIFIER:-}" ] || JUDGE=(--set robustness.classifier="$CLASSIFIER")

# 1. The unlearned models: nudity.sh and tench.sh make (or reuse) them
[ -f "$MODELS_N/salun/COMPLETE" ] && [ -f "$MODELS_N/esd_u/COMPLETE" ] && [ -f "$MODELS_N/erasediff_u/COMPLETE" ] || \
  OUT=$NUDITY_MODELS bash StableDiffusion/scripts/nudity.sh
[ -f "$MODELS_T/esd_x/COMPLETE" ] && [ -f "$MODELS_T/erasediff_x/COMPLETE" ] || \
  OUT=$TENCH_MODELS bash StableDiffusion/scripts/tench.sh

# 2. Every attack on every model of each concept; the original model's target images are made once per concept
attack_all() {
  local concept=$1 config=$2 models=$3 run model attack; shift 3
  for run in sd14 "$@"; do
    model=$models/$run; [ $run = sd14 ] && model=$PIPE
    for attack in none unlearndiffatk ringabell textual_inversion; do
      # a concept's own settings of an attack, where it has them (attacks/nudity/textual_inversion.yaml)
      yaml=$ATTACKS/$attack.yaml; [ -f "$ATTACKS/$concept/$attack.yaml" ] && yaml=$ATTACKS/$concept/$attack.yaml
      done_or "$OUT/$concept/$run/attacks/$attack/metrics.json" || $PY -m erasediff attack --config "$config" \
          --attack "$yaml" "${SETS[@]}" "${JUDGE[@]}" --set model.pretrained="$PIPE" --seed "$SEED" \
          --set robustness.targets="$OUT/$concept/targets" --model "$model" \
          --output-dir "$OUT/$concept/$run/attacks/$attack" --no-progress
    done
  done
}
attack_all nudity "$NUDITY_CFG" "$MODELS_N" erasediff_u esd_u salun
attack_all tench "$TENCH_CFG" "$MODELS_T" erasediff_x esd_x

# 3. Utility on COCO captions (when given): COCO FID and CLIP score of every nudity model
if [ -n "${COCO_CSV:-}" ]; then
  REF=(); [ -z "${COCO_STATS:-}" ] || REF+=(--set evaluate.reference_stats="$COCO_STATS")
  [ -z "${COCO_REAL:-}" ] || REF+=(--set evaluate.real="$COCO_REAL")
  CLIP=(); [ -z "${CLIP_MODEL:-}" ] || CLIP=(--set evaluate.clip_model="$CLIP_MODEL")
  CLS=(); [ -z "${CLASSIFIER:-}" ] || CLS=(--classifier "$CLASSIFIER")
  for run in sd14 erasediff_u esd_u salun; do
    model=$MODELS_N/$run; [ $run = sd14 ] && model=$PIPE
    done_or "$OUT/nudity/$run/coco/metrics.json" || $PY -m erasediff evaluate --config "$COCO_CFG" "${SETS[@]}" \
        --set model.pretrained="$PIPE" --set evaluate.prompts="$COCO_CSV" "${REF[@]}" "${CLIP[@]}" "${CLS[@]}" \
        --set evaluate.fid_cache="$OUT/fid_cache" --model "$model" --output-dir "$OUT/nudity/$run/coco" --no-progress
  done
fi
$PY -m erasediff report --layout robustness --results "$OUT"
echo "wrote $OUT/robustness.md, attacks in $OUT/<concept>/<model>/attacks/<attack> (metrics.json, manifest.csv, images/)"
