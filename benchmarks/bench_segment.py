"""Segmentation benchmark: silhouettes from photos without alpha (backend.segment).

    python benchmarks/bench_segment.py [--views 8] [--size 320x240] [--sheet /tmp/sheet.png]

Printed:

- synthetic photos (the project's rasterizer, a lumpy blob over plain, dark, light and
  green backdrops with lighting falloff and noise 0.02): the keyed mask's IoU against
  the rendered alpha (mean and worst over the views), and wall / CPU time per image;
- the temple (16 calibrated 640x480 photos, black backdrop, a dark cloth at one side):
  the keyed mask against the authors' recipe (grey > 0.19, dilate 10, erode 7): IoU on
  the whole photo, IoU outside the cloth where the cloth regions are known, the share
  of keyed pixels outside the recipe's mask, and how much of the recipe's mask shrunk
  by 4 px the keyed mask covers; time per image;
- the multi-view check on the temple's keyed masks (time, flagged views), and again
  with one photo shifted by 40 px (it should be flagged).

Not a test: it prints figures. The machine may be shared: CPU time / wall time shows
how much of a core the work got.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO_ROOT)

from backend.core import threads  # noqa: E402

threads.apply()  # before torch loads its OpenMP runtime (backend/core/threads.py)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from backend.core.camera_files import read_camera_file  # noqa: E402
from backend.segment.consistency import check_views  # noqa: E402
from backend.segment.contact_sheet import write_contact_sheet  # noqa: E402
from backend.segment.images import read_image  # noqa: E402
from backend.segment.key import key_silhouette  # noqa: E402
from backend.segment.reference import TEMPLE_CLOTH, cloth_region, iou, recipe_mask  # noqa: E402
from backend.segment.synthetic import BACKDROPS, synthetic_views  # noqa: E402

TEMPLE = REPO_ROOT / "data" / "templeSparseRing"  # the copy the repository ships


class Timer:
    """Wall and process CPU seconds of a `with` block, added up over uses."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._start = (time.perf_counter(), time.process_time())

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]


def bench_synthetic(views: int, width: int, height: int) -> None:
    print(f"synthetic: {views} views of {width}x{height}, noise 0.02")
    print(f"  {'backdrop':8s} {'IoU mean':>9s} {'IoU min':>8s} {'s/image':>8s} {'cpu s':>6s}")
    for backdrop in BACKDROPS:
        scene = synthetic_views(backdrop, count=views, width=width, height=height, seed=7)
        timer, scores = Timer(), []
        for view in scene:
            with timer:
                mask = key_silhouette(view.image, view.name)
            scores.append(iou(mask, view.alpha))
        print(f"  {backdrop:8s} {np.mean(scores):9.4f} {np.min(scores):8.4f} "
              f"{timer.wall / views:8.3f} {timer.cpu / views:6.3f}")


def bench_temple(sheet: Path | None):
    """Key the temple's photos; returns (cameras, images, masks, names)."""
    records = read_camera_file(TEMPLE / "templeSR_par.txt")
    images = [read_image(TEMPLE / r.image) for r in records]
    names = [r.name for r in records]
    timer, masks = Timer(), []
    print("temple: keyed mask against the authors' recipe")
    print(f"  {'photo':13s} {'IoU':>6s} {'IoU no cloth':>12s} {'outside':>8s} {'core':>6s}")
    rows = []
    for image, name in zip(images, names, strict=True):
        with timer:
            masks.append(key_silhouette(image, name))
        mask, recipe = masks[-1] > 0.5, recipe_mask(image)
        core = cv2.erode(recipe.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        no_cloth = f"{'-':>12s}"
        if name in TEMPLE_CLOTH:
            cloth = cloth_region(name, mask.shape)
            no_cloth = f"{iou(mask[~cloth], recipe[~cloth]):12.4f}"
        rows.append((iou(mask, recipe), (mask & ~recipe).sum() / mask.sum(), mask[core].mean()))
        print(f"  {name:13s} {rows[-1][0]:6.4f} {no_cloth} {rows[-1][1]:8.4f} {rows[-1][2]:6.4f}")
    mean = np.mean(rows, axis=0)
    print(f"  {'mean':13s} {mean[0]:6.4f} {'':12s} {mean[1]:8.4f} {mean[2]:6.4f}")
    print(f"  time per photo: {timer.wall / len(images):.3f} s wall, "
          f"{timer.cpu / len(images):.3f} s CPU")
    if sheet is not None:
        write_contact_sheet(sheet, images, masks, [recipe_mask(im) for im in images], names)
        print(f"  contact sheet (photo | mask | outlines: mask green, recipe magenta): {sheet}")
    return [r.camera for r in records], images, masks, names


def bench_consistency(cameras, images, masks, names) -> None:
    for label, shift in (("as photographed", 0), ("templeSR0007 shifted 40 px", 40)):
        images_k, masks_k = list(images), list(masks)
        if shift:
            images_k[6] = np.roll(images[6], shift, axis=1)
            masks_k[6] = key_silhouette(images_k[6], names[6])
        timer = Timer()
        with timer:
            result = check_views(cameras, masks_k, names, images_k)
        flagged = ", ".join(c.name for c in result.flagged()) or "none"
        worst = max(result.checks, key=lambda c: c.outside)
        print(f"multi-view check, {label}: {timer.wall:.1f} s wall ({timer.cpu:.1f} s CPU); "
              f"flagged: {flagged}; largest share outside the hull: {worst.outside:.3f} "
              f"({worst.name})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--sheet", type=Path, default=None,
                        help="write the temple's contact sheet here (PNG)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    bench_synthetic(args.views, width, height)
    cameras, images, masks, names = bench_temple(args.sheet)
    bench_consistency(cameras, images, masks, names)


if __name__ == "__main__":
    main()
