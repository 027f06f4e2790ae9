"""Fitting benchmark: quality and speed of `backend.fit.fitting.fit` against Cycles renders.

    python benchmarks/bench_fit.py [--models suzanne spot] [--sizes 128x128 320x240]
                                   [--set iterations=200 ...] [--picture docs/fit_silhouettes.png]

For each model (Suzanne subdivided twice, the Spot cow) and image size, Blender's
Cycles renders 24 fitting views (3 elevations x 8 azimuths) and 8 held-out views at
other angles with a transparent film (alpha = silhouette). The fitter starts from the
carved visual hull and fits the 24 views with its default options (``--set`` overrides
them). Printed per run, for the fitted mesh and for the visual hull alone:

- held-out IoU: the mesh rendered BY CYCLES from the held-out cameras, alpha > 0.5,
  against the target's Cycles renders, averaged over the 8 views;
- Chamfer: symmetric Chamfer distance (mean of both directions' mean nearest-point
  distances, 20k points sampled on each surface) relative to the true mesh's bounding
  box diagonal;
- iterations, wall time and process CPU time of the fit (on this machine's CPU;
  CPU time / wall time shows how much of the cores the fit got when the machine is
  shared).

Not a test: it prints figures. Needs the ``blender`` extra (bpy).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
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

from backend.core.camera import blender_camera, orbit_cameras  # noqa: E402
from backend.fit.fitting import FitOptions, View, auto_init_faces, fit  # noqa: E402
from backend.fit.mesh_ops import sample_surface  # noqa: E402
from backend.fit.visual_hull import Silhouettes, visual_hull  # noqa: E402
from devtools import cycles_render as cycles  # noqa: E402

FIT_ELEVATIONS = (-15.0, 15.0, 45.0)
FIT_AZIMUTHS = 8
# Held-out cameras: elevations and azimuths that no fitting view uses.
HELD_OUT = [(0.0, 22.5), (30.0, 67.5), (60.0, 112.5), (-30.0, 157.5),
            (5.0, 202.5), (35.0, 247.5), (-5.0, 292.5), (25.0, 337.5)]
CYCLES_SAMPLES = 16
CYCLES_FILTER = 1.5
CHAMFER_POINTS = 20000


def build_model(name: str):
    """A fresh scene holding the model; returns (scene, object)."""
    scene = cycles.reset_scene()
    if name == "suzanne":
        import bpy

        bpy.ops.mesh.primitive_monkey_add()
        obj = bpy.context.object
        subsurf = obj.modifiers.new("subdivision", "SUBSURF")
        subsurf.levels = subsurf.render_levels = 2
        bpy.ops.object.modifier_apply(modifier=subsurf.name)
        obj.modifiers.new("triangulate", "TRIANGULATE")
        bpy.ops.object.modifier_apply(modifier="triangulate")
    elif name == "spot":
        obj = cycles.load_obj(cycles.spot_path(REPO_ROOT))
    else:
        raise ValueError(f"unknown model {name!r}: use suzanne or spot")
    cycles.configure_cycles(scene, samples=CYCLES_SAMPLES, filter_width=CYCLES_FILTER,
                            max_bounces=0)
    return scene, obj


def camera_params(center, radius, width, height):
    """(fitting, held-out) lists of `blender_camera` keyword dicts."""
    # 50 mm lens on a 36 mm sensor: keep the object's bounding sphere inside the frame.
    distance = radius * 4.2 * max(1.0, width / height)
    common = {"resolution_x": width, "resolution_y": height, "lens": 50.0}
    fitting = [{"matrix_world": m.tolist(), **common}
               for m in orbit_cameras(FIT_AZIMUTHS, FIT_ELEVATIONS, distance, target=center)]
    held = [{"matrix_world": orbit_cameras(1, [el], distance, target=center,
                                           azimuth_offset_deg=az)[0].tolist(), **common}
            for el, az in HELD_OUT]
    return fitting, held


@contextlib.contextmanager
def quiet_stdout():
    """Silence Blender's per-render lines, which it writes to the process's stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def render_views(scene, params) -> list[np.ndarray]:
    cam = cycles.add_camera(scene, params[0], name="bench_camera")
    images = []
    with quiet_stdout():
        for p in params:
            cycles.apply_camera_params(cam, scene, p)
            images.append(cycles.render_rgba(scene, cam))
    return images


def cycles_iou(scene, target_obj, vertices, faces, params, targets) -> list[float]:
    """Render a mesh with Cycles from each camera and compare alpha > 0.5 with the targets."""
    target_obj.hide_render = True
    mesh_obj = cycles.add_mesh(vertices, faces, name="bench_fitted", scene=scene)
    try:
        images = render_views(scene, params)
    finally:
        import bpy

        bpy.data.objects.remove(mesh_obj)
        target_obj.hide_render = False
    out = []
    for image, target in zip(images, targets, strict=True):
        a, b = image[..., 3] > 0.5, target[..., 3] > 0.5
        union = (a | b).sum()
        out.append(float((a & b).sum() / union) if union else 1.0)
    return out, images


def chamfer(v_a, f_a, v_b, f_b, diagonal: float) -> float:
    from scipy.spatial import cKDTree

    pa = sample_surface(v_a, f_a, CHAMFER_POINTS, seed=1)
    pb = sample_surface(v_b, f_b, CHAMFER_POINTS, seed=2)
    d_ab = cKDTree(pb).query(pa)[0].mean()
    d_ba = cKDTree(pa).query(pb)[0].mean()
    return float(0.5 * (d_ab + d_ba) / diagonal)


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
            out[key] = float(value) if any(c in value for c in ".e") else int(value)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(model: str, width: int, height: int, options: FitOptions, keep: dict) -> dict:
    t0 = time.perf_counter()
    scene, obj = build_model(model)
    true_v, true_f = cycles.mesh_arrays(obj)
    lo, hi = true_v.min(axis=0), true_v.max(axis=0)
    center, radius = 0.5 * (lo + hi), 0.5 * float(np.linalg.norm(hi - lo))
    fit_params, held_params = camera_params(center, radius, width, height)
    fit_images = render_views(scene, fit_params)
    held_images = render_views(scene, held_params)
    t_targets = time.perf_counter() - t0

    views = [View(blender_camera(**p), img, name=f"fit {i}")
             for i, (p, img) in enumerate(zip(fit_params, fit_images, strict=True))]
    views += [View(blender_camera(**p), img, name=f"held-out {i}", held_out=True)
              for i, (p, img) in enumerate(zip(held_params, held_images, strict=True))]

    t1 = time.perf_counter()
    sil = Silhouettes.from_masks([v.camera for v in views if not v.held_out],
                                 [v.image[..., 3] for v in views if not v.held_out])
    hull = visual_hull(sil, target_faces=options.init_faces or auto_init_faces(max(width, height)))
    t_hull = time.perf_counter() - t1
    cpu0 = time.process_time()
    result = fit(views, options=options)
    fit_cpu = time.process_time() - cpu0

    diagonal = float(np.linalg.norm(hi - lo))
    fit_iou, fit_renders = cycles_iou(scene, obj, result.vertices, result.faces, held_params,
                                      held_images)
    hull_iou, _ = cycles_iou(scene, obj, hull.vertices, hull.faces, held_params, held_images)
    row = {
        "model": model, "size": f"{width}x{height}",
        "fit_iou": float(np.mean(fit_iou)), "fit_iou_min": float(np.min(fit_iou)),
        "hull_iou": float(np.mean(hull_iou)),
        "fit_chamfer": chamfer(result.vertices, result.faces, true_v, true_f, diagonal),
        "hull_chamfer": chamfer(hull.vertices, hull.faces, true_v, true_f, diagonal),
        "ours_heldout_iou": float(np.mean(list(result.heldout_iou.values()))),
        "iterations": result.iterations, "fit_time": result.timing["total"], "fit_cpu": fit_cpu,
        "hull_time": t_hull, "faces": len(result.faces), "hull_faces": len(hull.faces),
        "status": result.status, "targets_time": t_targets,
    }
    keep[(model, width, height)] = (held_images, fit_renders)
    print(f"  {model} {width}x{height}: {result.message}", flush=True)
    return row


def save_picture(path: Path, keep: dict) -> None:
    """Held-out silhouettes, one row per run, cropped to the object: white = both, red =
    target only, blue = fitted only (Cycles renders of each)."""
    from PIL import Image, ImageDraw

    rows = []
    for (model, width, height), (targets, fitted) in keep.items():
        tiles = []
        for target, mine in list(zip(targets, fitted, strict=True))[:4]:
            a, b = target[..., 3] > 0.5, mine[..., 3] > 0.5
            tile = np.zeros((*a.shape, 3), dtype=np.uint8)
            tile[a & b] = 255
            tile[a & ~b] = (230, 40, 40)
            tile[~a & b] = (40, 90, 230)
            # A square crop around the object, enlarged with visible pixels.
            ys, xs = np.nonzero(a | b)
            half = int(0.55 * max(ys.max() - ys.min(), xs.max() - xs.min())) + 2
            cy, cx = (ys.max() + ys.min()) // 2, (xs.max() + xs.min()) // 2
            tile = np.pad(tile, ((half, half), (half, half), (0, 0)))
            tile = tile[cy:cy + 2 * half, cx:cx + 2 * half]
            tile = np.asarray(Image.fromarray(tile).resize((240, 240), Image.NEAREST))
            tiles.append(np.pad(tile, ((4, 4), (4, 4), (0, 0)), constant_values=90))
        row = Image.fromarray(np.pad(np.concatenate(tiles, axis=1), ((22, 0), (0, 0), (0, 0)),
                                     constant_values=90))
        ImageDraw.Draw(row).text((6, 4), f"{model} {width}x{height}: held-out views "
                                 "(white both, red target only, blue fit only)",
                                 fill=(255, 255, 255))
        rows.append(np.asarray(row))
    full = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, full - r.shape[1]), (0, 0)), constant_values=90) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["suzanne", "spot"])
    parser.add_argument("--sizes", nargs="+", default=["128x128", "320x240"])
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                        help="override FitOptions fields, e.g. iterations=200")
    parser.add_argument("--picture", type=Path, default=None,
                        help="save target vs fitted held-out silhouettes to this PNG")
    args = parser.parse_args(argv)
    options = FitOptions.from_dict({**FitOptions().to_dict(), **parse_set(args.set)})
    changed = {k: v for k, v in options.to_dict().items() if FitOptions().to_dict()[k] != v}
    print(f"machine: {os.cpu_count()} cores, {cpu_name()}, {platform.system()}, load average "
          f"{os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}; options changed "
          f"from defaults: {changed or 'none'}", flush=True)
    keep, rows = {}, []
    for model in args.models:
        for size in args.sizes:
            width, height = (int(x) for x in size.lower().split("x"))
            rows.append(run(model, width, height, options, keep))
    print()
    print("| model | size | held-out IoU fit (min) | held-out IoU hull | Chamfer fit | "
          "Chamfer hull | iterations | fit wall time | fit CPU time | faces (hull) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['fit_iou']:.4f} ({r['fit_iou_min']:.3f}) | "
              f"{r['hull_iou']:.4f} | {r['fit_chamfer']:.4f} | {r['hull_chamfer']:.4f} | "
              f"{r['iterations']} | {r['fit_time']:.1f} s | {r['fit_cpu']:.1f} s | "
              f"{r['faces']} ({r['hull_faces']}) |")
    print()
    for r in rows:
        print(f"{r['model']} {r['size']}: our renderer's held-out IoU {r['ours_heldout_iou']:.4f},"
              f" hull carving {r['hull_time']:.1f} s, Cycles targets {r['targets_time']:.1f} s, "
              f"status {r['status']}")
    if args.picture:
        save_picture(args.picture, keep)


if __name__ == "__main__":
    main()
