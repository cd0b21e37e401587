#!/usr/bin/env bash
# One-GPU benchmark (docs/speed.md "GPU benchmark"): the paper's Table 2 at CIFAR10 size (s/step and CUDA peak
# memory of Finetune, EraseDiff, NegGrad, BlindSpot, SA and SalUn on SA's 38.6M UNet, batch 128, fp32 and bf16,
# as ratios to Finetune, with each step's compute-floor ratio), SD v1.4 size at 512 px (EraseDiff-u, EraseDiff-x,
# ESD-u, ESD-x and SalUn steps, bf16 + gradient checkpointing, batch 1: does EraseDiff-u fit 24 GB?) and sampling
# throughput (CIFAR10-size DDIM-100 with CFG in fp32, bf16 and compiled; SD 50 steps at 512 px). Random weights and
# synthetic images: nothing is downloaded, so it runs on an offline GPU machine.
# Expected run time: 6-8 min on one H100 / H200 (an estimate: no GPU was available to the project yet).
# GPU memory: up to ~30 GB (SD v1.4 EraseDiff-u; ESD keeps a frozen copy of the UNet).
# SMOKE=1 runs the same pipeline on tiny configs on the CPU in about 3 minutes (tests/test_gpu_bench.py).
# Offline machines without diffusers / pydantic: WHEELS=<folder> (docs/speed.md says which wheels) installs them
# with pip --no-deps; the package itself runs from src/ and uses the machine's own torch (>= 2.6).
# Writes $OUT/bench.md (all tables) and $OUT/bench.json, and each part's bench.json / bench.md in $OUT/<part>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-results/gpu_bench}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ] && ! $PY -c "import diffusers, pydantic, annotated_types" 2>/dev/null; then
  $PY -m pip install --no-deps --no-index --find-links "$WHEELS" diffusers pydantic pydantic-core annotated-types \
      typing-inspection
fi
C=DDPM/configs/cifar10; S=StableDiffusion/configs/bench; LIKE=sd-v1-4; TIMING=(--warmup 3 --steps 10); IMAGES=256; SD_IMAGES=8
SMALL=()
if [ "${SMOKE:-0}" = 1 ]; then
  OUT=${OUT}_smoke; LIKE=tiny; TIMING=(--warmup 1 --steps 2); IMAGES=4; SD_IMAGES=1
  SMALL=(--set "model.arch.block_out_channels=[16, 32]" --set "model.arch.down_block_types=[DownBlock2D, AttnDownBlock2D]"
         --set "model.arch.up_block_types=[AttnUpBlock2D, UpBlock2D]" --set model.arch.norm_num_groups=8
         --set model.arch.attention_head_dim=8 --set data.batch_size=8 --set sample.steps=2 --set device=cpu)
fi
mkdir -p "$OUT"
# 1. Synthetic CIFAR10-size data: 10 classes x 64 random 32x32 RGB images (a `folder` dataset; speed does not
#    depend on the pixels)
if [ ! -d "$OUT/data/cifar/9" ]; then
  $PY - "$OUT/data/cifar" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

rng = np.random.default_rng(0)
for c in range(10):
    folder = Path(sys.argv[1]) / str(c)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(64):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
EOF
fi
# num_workers 0: each bench config runs in a fresh spawned process, where DataLoader workers would be spawned (and
# import torch again) at every epoch of these small sets; reading a few PNGs per step in-process costs milliseconds
DATA=(--set data.dataset=folder --set data.root="$OUT/data/cifar" --set data.image_size=32 --set data.num_workers=0
      "${SMALL[@]}")
# 2. A random-weight "pretrained" CIFAR10 model (one training step) and what SA, SalUn and BlindSpot read
[ -f "$OUT/cifar_base/COMPLETE" ] || $PY -m erasediff train --config $C/pretrain.yaml "${DATA[@]}" \
    --set train.steps=1 --set sample.grid_per_class=1 --output-dir "$OUT/cifar_base" --no-progress
ART=(--set model.pretrained="$OUT/cifar_base" --artifacts-dir "$OUT/artifacts" --no-progress)
$PY -m erasediff precompute --config $C/selective_amnesia_airplane.yaml "${DATA[@]}" "${ART[@]}" \
    --set method.fisher_source=real --set method.fisher_samples_per_class=2 --set method.fisher_timesteps=10
$PY -m erasediff precompute --config $C/salun_airplane.yaml "${DATA[@]}" "${ART[@]}" --set method.mask_batches=1
$PY -m erasediff precompute --config $C/blindspot_airplane.yaml "${DATA[@]}" "${ART[@]}" --set train.steps=1
# 3. Table 2 at CIFAR10 size, fp32 then bf16
CONFIGS=(); for m in finetune erasediff neggrad blindspot selective_amnesia salun; do CONFIGS+=($C/${m}_airplane.yaml); done
FILES=(--set model.pretrained="$OUT/cifar_base" --set blindspot_airplane:method.proxy="$OUT/artifacts/blindspot_proxy"
       --set selective_amnesia_airplane:method.fisher="$OUT/artifacts/fisher.safetensors"
       --set selective_amnesia_airplane:method.replay_samples_per_class=16  # its replay set (setup, untimed)
       --set salun_airplane:method.mask="$OUT/artifacts/salun_mask.safetensors")
for p in no bf16; do
  [ -f "$OUT/cifar_$p/bench.json" ] || $PY -m erasediff bench --config "${CONFIGS[@]}" "${DATA[@]}" "${FILES[@]}" \
      --set train.mixed_precision=$p "${TIMING[@]}" --output-dir "$OUT/cifar_$p" --no-progress
done
# 4. Sampling throughput at CIFAR10 size: DDIM-100 with CFG (the config's sample section), fp32 / bf16 / compiled
SAMPLE=(--set model.pretrained="$OUT/cifar_base" --set sample.batch_size=$IMAGES)
[ -f "$OUT/cifar_sampling/bench.json" ] || $PY -m erasediff bench --config $C/finetune_airplane.yaml \
    $C/erasediff_airplane.yaml $C/neggrad_airplane.yaml "${DATA[@]}" "${SAMPLE[@]}" \
    --set erasediff_airplane:sample.mixed_precision=bf16 --set neggrad_airplane:sample.mixed_precision=bf16 \
    --set neggrad_airplane:model.compile=true --sample-images $IMAGES --warmup 1 --output-dir "$OUT/cifar_sampling" \
    --no-progress
# 5. SD v1.4 size: the published architecture with random weights, 4 + 4 generated training images at 512 px
[ -f "$OUT/sd/model_index.json" ] || $PY -m erasediff random-pipeline --like $LIKE --output-dir "$OUT/sd" --no-progress
SD=(--set model.pretrained="$OUT/sd" --set data.root="$OUT/data/sd" --set data.batch_size=1 --set data.forget_batch_size=1
    --set data.num_workers=0 --set train.mixed_precision=bf16 --set model.gradient_checkpointing=true)
if [ "${SMOKE:-0}" = 1 ]; then SD+=(--set device=cpu --set generate.steps=2 --set generate.height=64
    --set generate.width=64 --set data.image_size=64 --set sample.steps=2); fi
done_gen() { [ -f "$OUT/data/sd/manifest.csv" ]; }
done_gen || $PY -m erasediff generate --config $S/erasediff_u.yaml "${SD[@]}" \
    --prompts StableDiffusion/prompts/nudity_train.csv --set generate.max_per_prompt=1 \
    --output-dir "$OUT/data/sd" --no-progress
$PY -m erasediff precompute --config $S/salun.yaml "${SD[@]}" --set method.mask_batches=1 \
    --artifacts-dir "$OUT/sd_artifacts" --no-progress
[ -f "$OUT/sd_bf16/bench.json" ] || $PY -m erasediff bench --config $S/erasediff_u.yaml $S/erasediff_x.yaml \
    $S/esd_u.yaml $S/esd_x.yaml $S/salun.yaml "${SD[@]}" \
    --set salun:method.mask="$OUT/sd_artifacts/salun_mask.safetensors" --warmup 1 --steps 2 --output-dir "$OUT/sd_bf16" \
    --no-progress
[ -f "$OUT/sd_sampling/bench.json" ] || $PY -m erasediff bench --config $S/erasediff_u.yaml "${SD[@]}" \
    --set sample.steps=50 --set sample.batch_size=$SD_IMAGES --set sample.mixed_precision=bf16 \
    --sample-images $SD_IMAGES --warmup 1 --output-dir "$OUT/sd_sampling" --no-progress
# 6. One report
{
  for part in cifar_no cifar_bf16 cifar_sampling sd_bf16 sd_sampling; do echo "## $part"; echo; cat "$OUT/$part/bench.md"; echo; done
} > "$OUT/bench.md"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
parts = ["cifar_no", "cifar_bf16", "cifar_sampling", "sd_bf16", "sd_sampling"]
(out / "bench.json").write_text(json.dumps({p: json.loads((out / p / "bench.json").read_text()) for p in parts}, indent=2))
EOF
cat "$OUT/bench.md"
echo "wrote $OUT/bench.md and $OUT/bench.json"
