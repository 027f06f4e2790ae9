"""Camera refinement benchmark: does "Refine Cameras" undo a miscalibration?

    python benchmarks/bench_refine.py [--targets torus suzanne] [--size 128x128]
        [--degrees 1.5] [--fraction 0.02] [--focal 0.03] [--set iterations=200 ...]
        [--seed 1] [--large] [--cache out/bench_cache]
        [--fits exact miscalibrated "no tangents" refined polished]

For each target, `bench_fit.prepare_case` renders with Cycles 24 fitting views and 8
held-out views (alpha = silhouette). The fitting cameras are then miscalibrated: each
turned by ``--degrees`` about its centre and moved by ``--fraction`` of its distance to
the object, in random directions with the part common to all cameras (a similarity,
which no image can reveal) removed, so that the moved cameras put the true mesh where
the true cameras do (`camera_refine.miscalibrated`); the held-out cameras stay exact.
Three fits from the visual hull, default options (``--set`` overrides them):

- exact: the true cameras;
- miscalibrated: the moved cameras, no refinement;
- no tangents: the moved cameras with ``refine_cameras`` but ``refine_tangents`` off
  (the joint fit alone, no solve from the silhouettes' epipolar tangencies first);
- refined: the moved cameras with ``refine_cameras`` (the tangency solve, then the
  joint fit; as ``--set`` leaves the options);
- polished: the same with ``polish_steps=10`` (`backend.fit.joint_polish` after it);

and two with the poses exact but every fitting camera's focal length off by ``--focal``
(a fraction; 0 skips them), the held-out cameras exact:

- focal off: no refinement;
- focal refined: ``refine_cameras`` and ``refine_focal`` (the shared focal scale).

Printed per fit: held-out IoU (the fitted mesh rendered by our rasterizer from the
held-out cameras against the Cycles renders, alpha > 0.5), the fitted views' IoU,
wall time, and two camera errors against the true cameras, before and after the
corrections: the mean reprojection error of the true mesh's vertices (px), and the
mean displacement of the true mesh's silhouette (px; what the images can show: a
torus's camera turned about the torus's axis moves its vertices, not its silhouette),
with the largest correction and how many views were flagged; for the focal fits the shared
focal scale found against the one that undoes the error.

Not a test: it prints figures. Needs the ``blender`` extra (bpy).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from backend.core.camera import CameraMatrices  # noqa: E402
from backend.fit.camera_refine import apply_to_pose, miscalibrated  # noqa: E402
from backend.fit.fitting import FitError, FitOptions, FitResult, View, fit  # noqa: E402
from backend.render.renderer import Cameras, project_points, render_silhouette  # noqa: E402
from backend.render.settings import RenderSettings  # noqa: E402
from benchmarks.bench_fit import Case, cpu_name, parse_set, prepare_case  # noqa: E402

FITS = ("exact", "miscalibrated", "no tangents", "refined", "polished")


def miscalibrated_views(case: Case, degrees: float, fraction: float, seed: int) -> list[View]:
    """The case's views with every fitting camera moved (held-out ones exact)."""
    train = [v for v in case.views if not v.held_out]
    moved = iter(miscalibrated([v.camera for v in train], case.true_v, degrees, fraction,
                               np.random.default_rng(seed)))
    return [v if v.held_out else dataclasses.replace(v, camera=next(moved))
            for v in case.views]


def focal_off_views(case: Case, fraction: float) -> list[View]:
    """The case's views with every fitting camera's fx and fy times 1 + ``fraction``."""
    def scaled(camera: CameraMatrices) -> CameraMatrices:
        k = camera.intrinsics.copy()
        k[:2, :2] *= 1.0 + fraction
        return dataclasses.replace(camera, intrinsics=k)

    return [v if v.held_out else dataclasses.replace(v, camera=scaled(v.camera))
            for v in case.views]


def reprojection(points: np.ndarray, a: CameraMatrices, b: CameraMatrices) -> float:
    """Mean pixel distance between ``points`` (N, 3) seen by cameras a and b."""
    p = torch.tensor(points, dtype=torch.float64)
    uv = [project_points(p, Cameras.from_matrices([c], dtype=torch.float64))[0, :, :2]
          for c in (a, b)]
    return float((uv[0] - uv[1]).norm(dim=1).mean())


def silhouette_shift(case: Case, a: CameraMatrices, b: CameraMatrices) -> float:
    """Mean displacement (px of the camera's image) of the true mesh's silhouette between
    cameras a and b: the area where their hard silhouettes differ over the silhouette's
    length, rendered finer (4x at 128 px, at least 512 px on the long side). The length
    is the count of inside / outside pixel transitions times pi / 4 (exact on average
    over edge directions)."""
    supersample = max(1, -(-512 // max(a.width, a.height)))
    masks = []
    for camera in (a, b):
        fine = camera.resized(camera.width * supersample, camera.height * supersample)
        with torch.no_grad():
            alpha = render_silhouette(torch.tensor(case.true_v), torch.tensor(case.true_f),
                                      Cameras.from_matrices([fine], dtype=torch.float64),
                                      RenderSettings(sigma=1e-4, near=1e-3, far=1e4))[0]
        masks.append(alpha.numpy() > 0.5)
    inside = masks[1]
    transitions = (inside[1:] != inside[:-1]).sum() + (inside[:, 1:] != inside[:, :-1]).sum()
    length = max(float(transitions) * np.pi / 4, 1.0)
    return float((masks[0] != masks[1]).sum()) / length / supersample


def camera_errors(case: Case, moved: list[View],
                  result: FitResult | None) -> tuple[float, float]:
    """Mean over the fitting views of (the reprojection error of the true mesh's
    vertices, the displacement of its silhouette), px, between the true camera and the
    moved one, corrected by ``result``'s corrections when given."""
    corrections = {c.name: c for c in result.camera_corrections} if result else {}
    out = []
    for true, view in zip(case.views, moved, strict=True):
        if view.held_out:
            continue
        camera = view.camera
        if view.name in corrections:
            camera = apply_to_pose(camera, corrections[view.name])
        out.append((reprojection(case.true_v, camera, true.camera),
                    silhouette_shift(case, camera, true.camera)))
    vertex_px, silhouette_px = np.mean(out, axis=0)
    return float(vertex_px), float(silhouette_px)


def run_fit(label: str, views: list[View], options: FitOptions) -> tuple[dict, FitResult]:
    t0 = time.perf_counter()
    result = fit(views, None, None, options)
    row = {"fit": label, "heldout": float(np.mean(list(result.heldout_iou.values()))),
           "fitted": result.mean_fit_iou, "seconds": time.perf_counter() - t0,
           "status": result.status}
    return row, result


def run_target(target: str, width: int, height: int, options: FitOptions,
               args: argparse.Namespace) -> list[dict]:
    case, seconds = prepare_case(target, width, height, args.large, args.cache)
    print(f"{target} {case.size}: Cycles targets {seconds:.1f} s", flush=True)
    moved = miscalibrated_views(case, args.degrees, args.fraction, args.seed)
    rows = []
    refined = dataclasses.replace(options, refine_cameras=True)
    for label, views, fit_options in (
            ("exact", case.views, options), ("miscalibrated", moved, options),
            ("no tangents", moved, dataclasses.replace(refined, refine_tangents=False)),
            ("refined", moved, refined),
            ("polished", moved, dataclasses.replace(refined, polish_steps=10))):
        if label not in args.fits:
            continue
        refine = fit_options.refine_cameras
        try:
            row, result = run_fit(label, views, fit_options)
        except FitError as error:  # e.g. the hull of badly calibrated thin parts is empty
            print(f"  {label:<14} failed: {error}", flush=True)
            continue
        row["target"] = target
        row["camera_px"], row["silhouette_px"] = camera_errors(
            case, views, result if refine else None)
        if refine:
            worst = max(result.camera_corrections, key=lambda c: c.reprojection_px)
            flagged = sum(c.flagged for c in result.camera_corrections)
            print(f"  largest correction: {worst.name} {worst.rotation_deg:.2f} deg, "
                  f"{100 * worst.shift_fraction:.2f}% of its distance, "
                  f"{worst.reprojection_px:.2f} px; {flagged} flagged", flush=True)
        print(f"  {row_text(row)}", flush=True)
        rows.append(row)
    if args.focal:
        rows += focal_rows(case, target, options, args.focal)
    if rows and rows[0]["fit"] == "exact":
        exact = rows[0]["heldout"]
        print("  held-out IoU vs exact cameras: " + ", ".join(
            f"{r['fit']} {r['heldout'] - exact:+.4f}" for r in rows[1:]), flush=True)
    return rows


def focal_rows(case: Case, target: str, options: FitOptions, fraction: float) -> list[dict]:
    """The fits with every fitting camera's focal length off by ``fraction``: without
    refinement, and with the poses and the shared focal scale refined."""
    views = focal_off_views(case, fraction)
    rows = []
    for label, refine in (("focal off", False), ("focal refined", True)):
        row, result = run_fit(label, views, dataclasses.replace(
            options, refine_cameras=refine, refine_focal=refine))
        row["target"] = target
        row["camera_px"], row["silhouette_px"] = camera_errors(
            case, views, result if refine else None)
        if refine:
            found = result.camera_corrections[0].focal_scale
            print(f"  focal scale found {found:.4f}, undoing the error needs "
                  f"{1.0 / (1.0 + fraction):.4f}", flush=True)
        print(f"  {row_text(row)}", flush=True)
        rows.append(row)
    return rows


def row_text(r: dict) -> str:
    return (f"{r['fit']:<14} held-out IoU {r['heldout']:.4f}  fitted IoU {r['fitted']:.4f}  "
            f"camera error {r['camera_px']:.2f} px, silhouette {r['silhouette_px']:.3f} px  "
            f"{r['seconds']:.1f} s  ({r['status']})")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["torus", "suzanne"])
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--degrees", type=float, default=1.5)
    parser.add_argument("--fraction", type=float, default=0.02)
    parser.add_argument("--focal", type=float, default=0.03,
                        help="focal-length error of the focal fits (fraction; 0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping the Cycles renders between runs (as bench_fit)")
    parser.add_argument("--large", action="store_true",
                        help="the 100-view rig of bench_fit's large case (5 rings of 20)")
    parser.add_argument("--fits", nargs="+", choices=FITS, default=list(FITS),
                        help="which of the pose fits to run (the focal ones follow --focal)")
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                        help="override FitOptions fields, e.g. iterations=200")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    options = FitOptions.from_dict({**FitOptions().to_dict(), **parse_set(args.set)})
    width, height = (int(x) for x in args.size.lower().split("x"))
    print(f"machine: {os.cpu_count()} cores, {cpu_name()}, {platform.system()}, load average "
          f"{os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}; cameras moved "
          f"{args.degrees} deg and {100 * args.fraction:.1f}% of their distance; focal off "
          f"{100 * args.focal:.1f}%", flush=True)
    rows = []
    for target in args.targets:
        rows += run_target(target, width, height, options, args)
    print("\n".join(f"{r['target']:<8} {row_text(r)}" for r in rows))


if __name__ == "__main__":
    main()
