#!/usr/bin/env bash
# Download the I2P prompts (Hub dataset AIML-TUDA/i2p, 4703 prompts; docs/experiments.md "Nudity") on a user's machine.
# `erasediff generate` reads the CSV as it is (columns prompt, sd_seed, sd_guidance_scale).
# Expected run time: seconds (needs the Hub); GPU memory: none.
# Usage: bash StableDiffusion/scripts/download_i2p.sh [OUTPUT_DIR]   (default StableDiffusion/prompts)
set -euo pipefail
cd "$(dirname "$0")/../.."
. DDPM/scripts/lib.bash
DEST=${1:-StableDiffusion/prompts}
$PY -c "
import shutil, sys
from huggingface_hub import hf_hub_download
path = hf_hub_download('AIML-TUDA/i2p', 'i2p_benchmark.csv', repo_type='dataset')
shutil.copy(path, sys.argv[1] + '/i2p_benchmark.csv')
" "$DEST"
# the nude prompts the attacks target (robustness.prompts): I2P rows with nudity_percentage > 50 (docs/robustness.md)
$PY -m erasediff.data.prompts i2p-select "$DEST/i2p_benchmark.csv" "$DEST/i2p_nudity_attack.csv" --min-nudity 50
echo "wrote $DEST/i2p_benchmark.csv and $DEST/i2p_nudity_attack.csv"
