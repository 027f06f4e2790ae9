"""Fitting benchmark: quality and speed of `backend.fit.fitting.fit` from any start.

    python benchmarks/bench_fit.py [--targets suzanne spot torus table]
        [--starts cube uv_sphere icosphere hull sphere] [--sizes 128x128 320x240]
        [--set iterations=200 ...] [--picture docs/fit_shaded.png] [--large]

Targets and starts come from `devtools.fit_targets`: Suzanne, the Spot cow, an upright
torus (a through-hole) and a table with thin legs; starts are Blender's default cube
(12 triangles), a UV sphere 32x16, an icosphere of 320 faces, all at the origin as the
Add menu places them (not aligned to the target; ``--set align_initial=true`` asks the
fitter to align them), and the fitter's own starts from the silhouettes, the carved
visual hull and the "sphere" over its bounding box. For each target and image size,
Cycles renders 24 fitting views (3 elevations x 8 azimuths) and 8 held-out views at
other angles with a transparent film (alpha = silhouette); each start is fitted with
the default options (``--set`` overrides them). Printed per (target, start, size):

- held-out IoU: the mesh rendered BY CYCLES from the held-out cameras, alpha > 0.5,
  against the target's Cycles renders, averaged over the 8 views (worst view too);
  the carved visual hull's (no fit; a row of its own) is the reference;
- Chamfer: symmetric Chamfer distance (mean of both directions' mean nearest-point
  distances, 20k points sampled on each surface) relative to the true mesh's bounding
  box diagonal;
- faces, the per-triangle minimum angles (`backend.fit.quality`: smallest, 5th
  percentile, mean, % of triangles under 10 and 20 degrees) and the number of pairs
  of triangles that intersect without sharing a vertex;
- iterations, wall time and process CPU time of the fit (CPU time / wall time shows
  how much of the cores the fit got when the machine is shared).

``--large`` runs instead one large case: the table from 100 views of 800x800
(5 elevations x 20 azimuths), the same 8 held-out angles. ``--picture`` writes Cycles
renders in matte grey (sun + ambient) of target | visual hull | fit from the cube |
fit from the sphere | fit from the hull (the starts that ran), one row per target, at
the first size. ``--cache DIR`` keeps the Cycles targets (the large case's take minutes)
for the next run.

Not a test: it prints figures. Needs the ``blender`` extra (bpy).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path; import from the repo root.
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO_ROOT)

from backend.core import threads  # noqa: E402

threads.apply()  # before torch loads its OpenMP runtime (backend/core/threads.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.core.camera import blender_camera  # noqa: E402
from backend.fit.fitting import FitOptions, View, auto_init_faces, fit  # noqa: E402
from backend.fit.mesh_ops import sample_surface  # noqa: E402
from backend.fit.quality import quality_stats  # noqa: E402
from backend.fit.visual_hull import Silhouettes, visual_hull  # noqa: E402
from devtools import cycles_render as cycles  # noqa: E402
from devtools import fit_targets as ft  # noqa: E402

CHAMFER_POINTS = 20000
LARGE_TARGET = "table"
LARGE_SIZE = (800, 800)
LARGE_ELEVATIONS = (-20.0, 0.0, 20.0, 40.0, 60.0)
LARGE_AZIMUTHS = 20
HULL_REFERENCE = "(carved hull, no fit)"
PICTURE_TILE = 256  # pixels per shaded render
PICTURE_VIEW = 1  # the held-out camera the shaded renders look through (30 deg up)
PICTURE_COLUMNS = (("target", "target"), ("visual hull", "hull mesh"),
                   ("fit from the cube", "cube"), ("fit from the sphere", "sphere"),
                   ("fit from the hull", "hull"))


@dataclasses.dataclass
class Case:
    """One target at one image size: its Cycles renders, cameras and true surface."""

    target: str
    width: int
    height: int
    scene: object  # bpy.types.Scene holding the target
    obj: object  # the target's bpy object
    true_v: np.ndarray  # (V, 3) float64 world coordinates
    true_f: np.ndarray  # (F, 3) int64
    rig: ft.CameraRig
    views: list[View]  # fitting views, then held-out views
    held_images: list[np.ndarray]  # (H, W, 4) float32 Cycles renders

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(self.true_v.max(axis=0) - self.true_v.min(axis=0)))


def prepare_case(target: str, width: int, height: int, large: bool,
                 cache: Path | None = None) -> tuple[Case, float]:
    """Build the target's scene and render its views (or read them from ``cache``);
    returns (case, seconds taken)."""
    t0 = time.perf_counter()
    scene, obj = ft.build_target(target)
    true_v, true_f = cycles.mesh_arrays(obj)
    if large:
        rig = ft.camera_rig(true_v, width, height, LARGE_ELEVATIONS, LARGE_AZIMUTHS)
    else:
        rig = ft.camera_rig(true_v, width, height)
    fit_images = cached_renders(scene, rig.fitting, true_v, cache)
    held_images = cached_renders(scene, rig.held_out, true_v, cache)
    views = [View(blender_camera(**p), img, name=f"fit {i}")
             for i, (p, img) in enumerate(zip(rig.fitting, fit_images, strict=True))]
    views += [View(blender_camera(**p), img, name=f"held-out {i}", held_out=True)
              for i, (p, img) in enumerate(zip(rig.held_out, held_images, strict=True))]
    case = Case(target, width, height, scene, obj, true_v, true_f, rig, views, held_images)
    return case, time.perf_counter() - t0


def cached_renders(scene, params: list[dict], true_v: np.ndarray,
                   cache: Path | None) -> list[np.ndarray]:
    """`ft.render_views`, kept in ``cache`` (a folder) under a digest of the target's
    vertices (V, 3), the cameras and the Cycles settings, so a rerun skips Cycles."""
    if cache is None:
        return ft.render_views(scene, params)
    digest = hashlib.sha1(np.ascontiguousarray(true_v).tobytes())
    digest.update(json.dumps([params, ft.CYCLES_SAMPLES, ft.CYCLES_FILTER]).encode())
    path = cache / f"targets-{digest.hexdigest()[:20]}.npy"
    if path.exists():
        return list(np.load(path))
    images = ft.render_views(scene, params)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack(images))
    return images


def cycles_iou(case: Case, vertices, faces) -> list[float]:
    """Render a mesh with Cycles from each held-out camera; IoU of alpha > 0.5 per view."""
    import bpy

    case.obj.hide_render = True
    mesh_obj = cycles.add_mesh(vertices, faces, name="bench_fitted", scene=case.scene)
    try:
        images = ft.render_views(case.scene, case.rig.held_out)
    finally:
        bpy.data.objects.remove(mesh_obj)
        case.obj.hide_render = False
    out = []
    for image, target in zip(images, case.held_images, strict=True):
        a, b = image[..., 3] > 0.5, target[..., 3] > 0.5
        union = (a | b).sum()
        out.append(float((a & b).sum() / union) if union else 1.0)
    return out


def chamfer(v_a, f_a, v_b, f_b, diagonal: float) -> float:
    from scipy.spatial import cKDTree

    pa = sample_surface(v_a, f_a, CHAMFER_POINTS, seed=1)
    pb = sample_surface(v_b, f_b, CHAMFER_POINTS, seed=2)
    d_ab = cKDTree(pb).query(pa)[0].mean()
    d_ba = cKDTree(pa).query(pb)[0].mean()
    return float(0.5 * (d_ab + d_ba) / diagonal)


def surface_figures(case: Case, vertices, faces) -> dict:
    """Held-out Cycles IoU, Chamfer, triangle quality and self-intersections of a mesh."""
    iou = cycles_iou(case, vertices, faces)
    return {
        "iou": float(np.mean(iou)), "iou_min": float(np.min(iou)),
        "chamfer": chamfer(vertices, faces, case.true_v, case.true_f, case.diagonal),
        "quality": quality_stats(vertices, faces),
        "intersections": ft.self_intersections(vertices, faces),
    }


def carved_hull(case: Case, options: FitOptions):
    """The visual hull of the fitting views at the fitter's start size; (hull, wall seconds,
    CPU seconds)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    fitting = [v for v in case.views if not v.held_out]
    sil = Silhouettes.from_masks([v.camera for v in fitting], [v.image[..., 3] for v in fitting])
    faces = options.init_faces or auto_init_faces(max(case.width, case.height))
    hull = visual_hull(sil, target_faces=faces)
    return hull, time.perf_counter() - t0, time.process_time() - cpu0


def run_start(case: Case, start: str, options: FitOptions, hull_figures: dict):
    """Fit ``case`` from ``start``; returns (row of figures: dict, the `FitResult`)."""
    mesh = ft.start_mesh(start)
    if mesh is None:  # the fitter's own start from the silhouettes
        options = dataclasses.replace(options, init=start)
        vertices = faces = None
    else:
        vertices, faces = mesh
    cpu0 = time.process_time()
    result = fit(case.views, vertices, faces, options=options)
    fit_cpu = time.process_time() - cpu0
    row = {
        "target": case.target, "start": start, "size": case.size,
        "fit": surface_figures(case, result.vertices, result.faces), "hull": hull_figures,
        "ours_heldout_iou": float(np.mean(list(result.heldout_iou.values()))),
        "iterations": result.iterations, "fit_time": result.timing["total"],
        "fit_cpu": fit_cpu, "status": result.status,
    }
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.timing.items())
    print(f"  {case.target} {case.size} from {start}: {result.message}\n  timing: {timing}; "
          f"peak memory of the process so far {peak_memory_gib():.2f} GiB\n  {table_row(row)}",
          flush=True)
    return row, result


def peak_memory_gib() -> float:
    """The process's peak resident memory so far (Linux reports KiB), Cycles included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(target: str, width: int, height: int, starts, options: FitOptions, large: bool,
             meshes: dict, cache: Path | None = None) -> list[dict]:
    """Every start on one target and size; fills ``meshes`` for the shaded picture."""
    case, t_targets = prepare_case(target, width, height, large, cache)
    hull, t_hull, cpu_hull = carved_hull(case, options)
    hull_figures = surface_figures(case, hull.vertices, hull.faces)
    # The reference: the carved hull itself, not fitted ("ours_heldout_iou" None).
    rows = [{"target": target, "start": HULL_REFERENCE, "size": case.size, "fit": hull_figures,
             "hull": hull_figures, "ours_heldout_iou": None, "fit_time": t_hull,
             "fit_cpu": cpu_hull}]
    print(f"{target} {case.size}: Cycles targets {t_targets:.1f} s\n  {table_row(rows[0])}",
          flush=True)
    if target not in meshes:
        meshes[target] = {"target": (case.true_v, case.true_f),
                          "hull mesh": (hull.vertices, hull.faces)}
    for start in starts:
        row, result = run_start(case, start, options, hull_figures)
        rows.append(row)
        meshes[target].setdefault(start, (result.vertices, result.faces))
    return rows


TABLE_HEADER = (
    "| target | start | size | held-out IoU fit (worst) | held-out IoU hull | Chamfer fit | "
    "Chamfer hull | faces | min angle: min / p5 / mean | % under 10 / 20 deg | "
    "self-intersections | fit wall time | fit CPU time |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict) -> str:
    """One row of `TABLE_HEADER`'s table from a `run_start` row."""
    f, q = r["fit"], r["fit"]["quality"]
    return (f"| {r['target']} | {r['start']} | {r['size']} | {f['iou']:.4f} ({f['iou_min']:.3f})"
            f" | {r['hull']['iou']:.4f} | {f['chamfer']:.4f} | {r['hull']['chamfer']:.4f} | "
            f"{int(q['faces'])} | {q['min_angle_min']:.1f} / {q['min_angle_p5']:.1f} / "
            f"{q['min_angle_mean']:.1f} | {q['pct_under_10']:.1f} / {q['pct_under_20']:.1f} | "
            f"{f['intersections']} | {r['fit_time']:.1f} s | {r['fit_cpu']:.1f} s |")


def print_table(rows: list[dict]) -> None:
    print()
    print(TABLE_HEADER)
    for r in rows:
        print(table_row(r))
    print()
    for r in rows:
        if r["ours_heldout_iou"] is not None:
            print(f"{r['target']} {r['start']} {r['size']}: our renderer's held-out IoU "
                  f"{r['ours_heldout_iou']:.4f}, {r['iterations']} iterations, "
                  f"status {r['status']}")


def save_picture(path: Path, meshes: dict) -> None:
    """Shaded Cycles renders, one row per target: the columns of `PICTURE_COLUMNS` that
    some target has (a start not run on any target gets no column)."""
    from PIL import Image, ImageDraw

    columns = [c for c in PICTURE_COLUMNS if any(c[1] in found for found in meshes.values())]
    rows = []
    for target, found in meshes.items():
        true_v = found["target"][0]
        # Rendered twice the tile size, then cropped to the target's extent (the camera
        # frames the bounding sphere with a wide margin).
        side = 2 * PICTURE_TILE
        params = ft.camera_rig(true_v, side, side).held_out[PICTURE_VIEW]
        crop = None
        tiles = []
        for title, key in columns:
            if key in found:
                image = ft.shaded_render(*found[key], params)
                crop = crop or _object_square(image)
                top, left, half = crop
                image = np.pad(image, ((half, half), (half, half), (0, 0)), constant_values=255)
                tile = Image.fromarray(image[top:top + 2 * half, left:left + 2 * half])
                tile = tile.resize((PICTURE_TILE, PICTURE_TILE), Image.LANCZOS)
            else:
                tile = Image.new("RGB", (PICTURE_TILE, PICTURE_TILE), (255, 255, 255))
                title += " (not run)"
            ImageDraw.Draw(tile).text((6, 4), f"{target}: {title}", fill=(0, 0, 0))
            tiles.append(np.pad(np.asarray(tile), ((2, 2), (2, 2), (0, 0)), constant_values=90))
        rows.append(np.concatenate(tiles, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    print(f"wrote {path}")


def _object_square(image: np.ndarray) -> tuple[int, int, int]:
    """(top, left, half side) of a square around the non-white pixels of (H, W, 3), with a
    15% margin, in the image padded by ``half`` white pixels on every side."""
    ys, xs = np.nonzero(np.any(image < 250, axis=2))
    half = int(0.575 * max(ys.max() - ys.min(), xs.max() - xs.min())) + 2
    cy, cx = (ys.max() + ys.min()) // 2, (xs.max() + xs.min()) // 2
    return cy, cx, half


def parse_set(items) -> dict:
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--set needs key=value, got {item!r}")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        elif "," in value or key == "subdivide_at":
            out[key] = [float(x) for x in value.split(",") if x]
        else:
            out[key] = _number_or_text(value)
    return out


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(ft.TARGETS), choices=ft.TARGETS)
    parser.add_argument("--starts", nargs="+", default=list(ft.STARTS), choices=ft.STARTS)
    parser.add_argument("--sizes", nargs="+", default=["128x128", "320x240"])
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                        help="override FitOptions fields, e.g. iterations=200")
    parser.add_argument("--picture", type=Path, default=None,
                        help="save shaded renders of target, hull and fits to this PNG")
    parser.add_argument("--large", action="store_true",
                        help=f"only the large case: {LARGE_TARGET}, 100 views of 800x800")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the Cycles target renders in this folder (e.g. out/bench_cache)"
                             " and reuse them on the next run")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    options = FitOptions.from_dict({**FitOptions().to_dict(), **parse_set(args.set)})
    changed = {k: v for k, v in options.to_dict().items() if FitOptions().to_dict()[k] != v}
    print(f"machine: {os.cpu_count()} cores, {cpu_name()}, {platform.system()}, load average "
          f"{os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}; options changed "
          f"from defaults: {changed or 'none'}\noptions: {options.to_dict()}", flush=True)
    if args.large:
        cases = [(LARGE_TARGET, *LARGE_SIZE)]
    else:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes]
        cases = [(target, w, h) for target in args.targets for w, h in sizes]
    meshes, rows = {}, []
    for target, width, height in cases:
        rows += run_case(target, width, height, args.starts, options, args.large, meshes,
                         args.cache)
    print_table(rows)
    if args.picture:
        save_picture(args.picture, meshes)


if __name__ == "__main__":
    main()
