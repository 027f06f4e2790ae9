#!/usr/bin/env bash
# The demo (the README's main command): real photographs. The temple of the Middlebury
# multi-view data set (data/templeSparseRing: 16 calibrated 640x480 photos on a black
# backdrop, no alpha) is imported from its calibration file, its silhouettes are found by
# the backend (keyed from the backdrop, checked across views), a mesh is fitted from
# their visual hull (4 photos held out) headless, and it writes into out/demo/:
#   fitted.blend         the imported cameras and photos, and the fitted mesh
#   fitted.obj           the fitted mesh
#   report.json          per-view IoU (fitted and held-out views), silhouettes (source per
#                        photo, flagged views and why), time per stage, device
#   contact_sheet.png    photo | mask | outlines (mask green, fitted mesh magenta) per photo
#   shaded.png           photos beside Cycles renders of the fitted mesh
#
#   bash scripts/demo.sh --synthetic   the earlier demo: Suzanne rendered by Cycles from 24
#                                      cameras, Blender's default cube fitted to the renders'
#                                      alpha; shaded.png: photo | cube | fit
#                                      (out/demo-synthetic/)
# Creates or updates the virtual environment first (scripts/env.sh).
# Settings: OUT (folder), ITERATIONS, RESOLUTION (image size), DEVICE (auto|cpu|cuda).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export SOFTRAS_USER_DIR="${SOFTRAS_USER_DIR:-$ROOT/.cache/softras_blender}"
DEVICE="${DEVICE:-auto}"

if [[ "${1:-}" == "--synthetic" ]]; then
    OUT="${OUT:-out/demo-synthetic}"
    ITERATIONS="${ITERATIONS:-300}"
    RESOLUTION="${RESOLUTION:-128}"
    mkdir -p "$OUT"
    python devtools/demo.py scene --out "$OUT" --cameras 24 --size "$RESOLUTION" --start CUBE
    python softras_blender/headless.py -- --scene "$OUT/scene.blend" --object Cube \
        --iterations "$ITERATIONS" --resolution "$RESOLUTION" --device "$DEVICE" \
        --hold-out-every 6 --output "$OUT/fitted.blend" --export-obj "$OUT/fitted.obj" \
        --report "$OUT/report.json"
    python devtools/demo.py sheet --scene "$OUT/scene.blend" --fitted "$OUT/fitted.blend" \
        --out "$OUT/contact_sheet.png"
    python devtools/demo.py shaded --fitted "$OUT/fitted.blend" --before Cube \
        --out "$OUT/shaded.png"
    echo "demo done: see $OUT/contact_sheet.png, $OUT/shaded.png and $OUT/report.json"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: bash scripts/demo.sh [--synthetic]" >&2
    exit 2
fi

OUT="${OUT:-out/demo}"
ITERATIONS="${ITERATIONS:-200}"
RESOLUTION="${RESOLUTION:-160}"
mkdir -p "$OUT"
python softras_blender/headless.py -- --import data/templeSparseRing/templeSR_par.txt \
    --silhouettes auto --iterations "$ITERATIONS" --resolution "$RESOLUTION" \
    --device "$DEVICE" --hold-out-every 4 --output "$OUT/fitted.blend" \
    --export-obj "$OUT/fitted.obj" --report "$OUT/report.json" \
    --contact-sheet "$OUT/contact_sheet.png"
python devtools/demo.py shaded --fitted "$OUT/fitted.blend" --out "$OUT/shaded.png"
echo "demo done: see $OUT/contact_sheet.png, $OUT/shaded.png and $OUT/report.json"
