#!/usr/bin/env bash
# The demo (the README's main command): builds a scene with Suzanne rendered by Cycles from
# 24 cameras (the renders become the cameras' background images) and an icosphere, fits the
# icosphere to the renders headless, and writes into out/demo/:
#   scene.blend          the input scene (left unchanged by the fit)
#   fitted.blend         the fitted scene: the icosphere with a "SoftRas Fit" shape key
#   fitted.obj           the fitted mesh
#   report.json          per-view IoU (fitted and held-out views), loss history, timing, device
#   contact_sheet.png    target against fitted silhouettes (Cycles), per camera
# Creates or updates the virtual environment first (scripts/env.sh).
# Settings: OUT (folder), ITERATIONS, RESOLUTION (image size), DEVICE (auto|cpu|cuda).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
OUT="${OUT:-out/demo}"
ITERATIONS="${ITERATIONS:-300}"
RESOLUTION="${RESOLUTION:-128}"
DEVICE="${DEVICE:-auto}"
mkdir -p "$OUT"
export SOFTRAS_USER_DIR="${SOFTRAS_USER_DIR:-$ROOT/.cache/softras_blender}"

python devtools/demo.py scene --out "$OUT" --cameras 24 --size "$RESOLUTION"
python softras_blender/headless.py -- --scene "$OUT/scene.blend" --object Icosphere \
    --iterations "$ITERATIONS" --resolution "$RESOLUTION" --device "$DEVICE" \
    --hold-out-every 6 --output "$OUT/fitted.blend" --export-obj "$OUT/fitted.obj" \
    --report "$OUT/report.json"
python devtools/demo.py sheet --scene "$OUT/scene.blend" --fitted "$OUT/fitted.blend" \
    --out "$OUT/contact_sheet.png"
echo "demo done: see $OUT/contact_sheet.png and $OUT/report.json"
