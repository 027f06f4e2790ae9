"""How long importing calibrated cameras takes (the issue asks: 100 cameras under a second).

    python benchmarks/bench_camera_import.py [--cameras 100] [--size 640x480] [--repeat 5]

Writes a synthetic capture into a temporary folder: ``--cameras`` PNG images and their
cameras as a COLMAP text model, a transforms.json and a Middlebury *_par.txt. Then, for
each format, times
1. reading: `camera_files.load_camera_file` (parse, find the images, convert to
   Blender settings; bpy-free, what the headless importer and the operator call), and
2. into Blender (when the bpy module is installed): `camera_import.import_cameras` on
   an empty factory scene (collection, camera objects, background images, render size),
   which includes step 1.
Prints the best and the median of ``--repeat`` runs; not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.core import camera_files  # noqa: E402
from backend.core.camera import CameraMatrices, orbit_cameras, world_to_camera  # noqa: E402


def write_capture(folder: Path, count: int, width: int, height: int) -> dict[str, Path]:
    """PNG images and their cameras in three formats; returns {format: camera file}."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    k = camera_files.intrinsics_matrix(0.9 * width, 0.9 * width * 1.004, 0.48 * width,
                                       0.51 * height)
    records = []
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    for i, world in enumerate(orbit_cameras(count, [25.0], 4.0)):
        name = f"view_{i:04d}.png"
        Image.fromarray(pixels).save(images / name, compress_level=1)
        cam = CameraMatrices(k, world_to_camera(world), width, height, False)
        records.append(camera_files.CameraRecord(name[:-4], name, cam))
    camera_files.write_colmap_text(folder / "sparse" / "0", records)
    camera_files.write_transforms(folder / "transforms.json",
                                  [camera_files.CameraRecord(r.name, f"images/{r.image}",
                                                             r.camera) for r in records])
    lines = [str(count)]
    for r in records:
        numbers = [*r.camera.intrinsics.ravel(), *r.camera.world_to_camera[:3, :3].ravel(),
                   *r.camera.world_to_camera[:3, 3]]
        lines.append(r.image + " " + " ".join(repr(float(x)) for x in numbers))
    (images / "capture_par.txt").write_text("\n".join(lines) + "\n")
    return {"COLMAP text": folder / "sparse" / "0" / "cameras.txt",
            "transforms.json": folder / "transforms.json",
            "Middlebury par": images / "capture_par.txt"}


def timed(function, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def blender_import(path: Path, expected: int):
    import bpy

    from softras_blender import camera_import

    def run():
        bpy.ops.wm.read_factory_settings(use_empty=True)
        start = time.perf_counter()
        collection = camera_import.import_cameras(bpy.context.scene, path)
        elapsed = time.perf_counter() - start
        if len(collection.objects) != expected:
            raise RuntimeError(f"imported {len(collection.objects)} cameras, not {expected}")
        return elapsed

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--size", default="640x480", help="image size, WxH")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.lower().split("x"))
    try:
        import bpy  # noqa: F401
        have_bpy = True
    except ImportError:
        have_bpy = False
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{args.cameras} cameras, {width}x{height} PNGs, best / median of {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="softras_bench_cameras_") as tmp:
        files = write_capture(Path(tmp), args.cameras, width, height)
        for name, path in files.items():
            best, median = timed(lambda p=path: camera_files.load_camera_file(p), args.repeat)
            line = f"{name:16s} read {best * 1e3:7.1f} / {median * 1e3:7.1f} ms"
            if have_bpy:
                run = blender_import(path, args.cameras)
                times = [run() for _ in range(args.repeat)]
                line += (f"   into Blender {min(times) * 1e3:7.1f} / "
                         f"{statistics.median(times) * 1e3:7.1f} ms")
            print(line)
    if not have_bpy:
        print("(bpy is not installed: the Blender import was not measured)")


if __name__ == "__main__":
    main()
