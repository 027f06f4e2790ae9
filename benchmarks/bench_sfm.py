"""Structure from motion on Cycles renders of Spot at known cameras: time per stage and
the pose errors.

    python benchmarks/bench_sfm.py [--scene out/sfm] [--ordering auto] [--threads -1]
    python benchmarks/bench_sfm.py --images data/templeSparseRing \
        --truth data/templeSparseRing/templeSR_par.txt          (photos with any camera file)

Renders the scene first when ``<scene>/images`` is missing (devtools/sfm_scene.py: 24
views of 640x480, 3 rings of 8; needs bpy, takes minutes). Prints the wall time of
each stage (features, matching, mapping), how many photos registered, and, after the
similarity that best aligns the solved camera centres with the true ones (Umeyama),
the worst rotation error in degrees and the worst centre error as a fraction of the
ring's radius (the cameras' median distance from the point they look at); then, for
the rendered scene (Z up), the tilt of the normalised scene's up axis against Z.
Targets (issue 11): every photo registered, rotation < 0.5 degrees, centre < 1% of the
radius.

``--fit`` (rendered scene only) then compares two fits from the visual hull, the
product's default options (``--set key=value`` overrides them), on the registered
photos at ``--fit-width`` pixels wide, every ``--hold-out-every``-th photo held out.
Both use the same silhouettes (Spot rendered by our rasterizer from the true cameras;
the floor is ignored): one with the true cameras, one with the solved cameras in the
normalised frame, its held-out views seen by the true cameras aligned into that frame
by the Umeyama similarity of the camera centres. Target (issue 11): the solved fit's
held-out IoU within 0.01 of the true fit's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

# Run as a script, Python puts benchmarks/ first on sys.path; keep imports rooted at
# the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from backend.core import threads  # noqa: E402

threads.apply()  # before torch (the --fit fits) loads its OpenMP runtime

from backend.core.camera import camera_centres, nearest_point_to_axes  # noqa: E402
from backend.core.camera_files import read_camera_file  # noqa: E402
from backend.sfm import normalise_scene, pose_errors, solve_cameras, umeyama  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=Path("out/sfm"),
                        help="folder with images/ and truth/ (rendered when missing)")
    parser.add_argument("--images", type=Path,
                        help="solve these photos instead of the rendered scene (with --truth)")
    parser.add_argument("--truth", type=Path,
                        help="their true cameras: any file backend.core.camera_files reads")
    parser.add_argument("--ordering", default="auto",
                        choices=("auto", "exhaustive", "sequential"))
    parser.add_argument("--threads", type=int, default=-1, help="COLMAP threads (-1: all)")
    parser.add_argument("--samples", type=int, default=12,
                        help="Cycles samples when the scene is rendered")
    parser.add_argument("--fit", action="store_true",
                        help="also fit with the solved and with the true cameras (see above)")
    parser.add_argument("--fit-width", type=int, default=160,
                        help="width of the fitted silhouettes in pixels")
    parser.add_argument("--hold-out-every", type=int, default=4,
                        help="hold out every n-th registered photo in the fits")
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                        help="FitOptions overrides for both fits, e.g. iterations=300")
    args = parser.parse_args(argv)
    if (args.images is None) != (args.truth is None):
        parser.error("--images and --truth go together")
    if args.fit and args.images is not None:
        parser.error("--fit needs the rendered scene (its mesh gives the silhouettes)")
    return args


def ensure_scene(folder: Path, samples: int) -> None:
    if (folder / "images").is_dir() and (folder / "truth").is_dir():
        return
    from devtools.sfm_scene import render_views

    start = time.perf_counter()
    records = render_views(folder, samples=samples)
    print(f"rendered {len(records)} views into {folder} in {time.perf_counter() - start:.0f} s")


def report_progress():
    """on_progress that prints each stage's start and every 25% of it."""
    shown = {}

    def on_progress(stage: str, fraction: float, message: str) -> None:
        step = int(fraction * 4)
        if shown.get(stage, -1) < step:
            shown[stage] = step
            print(f"  {stage:9s} {fraction:4.0%}  {message}", flush=True)

    return on_progress


def score(result, truth_by_image: dict, truth_z_up: bool) -> None:
    """Print the pose errors of the solved cameras against the truth, and (``truth_z_up``:
    the truth's world has Z up, as the rendered scene's) the normalised scene's tilt."""
    solved = np.stack([c.camera.world_to_camera for c in result.cameras])
    truth = np.stack([truth_by_image[c.image].camera.world_to_camera for c in result.cameras])
    errors = pose_errors(solved, truth)
    centres = camera_centres(truth)
    subject = nearest_point_to_axes(centres, truth[:, 2, :3])
    radius = float(np.median(np.linalg.norm(centres - subject, axis=1)))
    worst = int(np.argmax(errors.centre))
    print(f"rotation error: worst {errors.rotation_deg.max():.3f} deg, "
          f"mean {errors.rotation_deg.mean():.3f} deg   (target < 0.5)")
    print(f"centre error:   worst {errors.centre.max() / radius:.3%} of the ring radius "
          f"{radius:.2f} ({result.cameras[worst].name}), mean "
          f"{errors.centre.mean() / radius:.3%}   (target < 1%)")
    if not truth_z_up:
        return
    normalised = normalise_scene(result)
    tilt = pose_errors(np.stack([c.camera.world_to_camera for c in normalised.cameras]), truth)
    z = tilt.similarity.rotation @ np.array([0.0, 0.0, 1.0])
    print(f"normalised: up from {normalised.frame['up']}, tilt against the true up "
          f"{np.degrees(np.arccos(np.clip(z[2], -1, 1))):.3f} deg; scale from "
          f"{normalised.frame['scale']}")


def spot_mesh() -> tuple[np.ndarray, np.ndarray]:
    """Spot as the rendered scene holds it: vertices (V, 3) float64, faces (F, 3) int64."""
    from devtools import cycles_render as cycles

    cycles.reset_scene()
    return cycles.mesh_arrays(cycles.load_obj(cycles.spot_path()))


def silhouettes(vertices, faces, cameras) -> np.ndarray:
    """(N, H, W) float32 masks, 1 inside the mesh, of the cameras (one size)."""
    import torch

    from backend.render.renderer import Cameras, RenderSettings, render_silhouette

    alpha = render_silhouette(torch.tensor(vertices), torch.tensor(faces),
                              Cameras.from_matrices(cameras, dtype=torch.float64),
                              RenderSettings(sigma=1e-3))
    return (alpha > 0.5).numpy().astype(np.float32)


def fit_views(result, truth_by_image: dict, width: int, hold_out_every: int):
    """The registered photos as fitting views: (with the true cameras, with the solved
    cameras of the normalised ``result`` and, held out, the true cameras aligned into its
    frame). Silhouettes from the true cameras; ``width`` pixels wide."""
    from backend.fit.fitting import View

    truth = [truth_by_image[c.image].camera for c in result.cameras]
    to_solved = umeyama(camera_centres(np.stack([t.world_to_camera for t in truth])),
                        camera_centres(np.stack([c.camera.world_to_camera
                                                 for c in result.cameras])))
    height = round(width * truth[0].height / truth[0].width)
    truth = [t.resized(width, height) for t in truth]
    masks = silhouettes(*spot_mesh(), truth)
    true_views, solved_views = [], []
    for i, (solved, true, mask) in enumerate(zip(result.cameras, truth, masks, strict=True)):
        image = np.repeat(mask[..., None], 4, axis=2)
        held = hold_out_every > 0 and i % hold_out_every == hold_out_every - 1
        aligned = dataclasses.replace(true, world_to_camera=to_solved.camera_pose(
            true.world_to_camera))
        true_views.append(View(true, image, solved.name, held))
        solved_views.append(View(aligned if held else solved.camera.resized(width, height),
                                 image, solved.name, held))
    return true_views, solved_views


def compare_fits(result, truth_by_image: dict, args) -> None:
    """Fit with the true and with the solved cameras; print both held-out IoUs."""
    from backend.fit.fitting import FitOptions, fit
    from benchmarks.bench_fit import parse_set

    options = FitOptions.from_dict(parse_set(args.set))
    true_views, solved_views = fit_views(normalise_scene(result), truth_by_image,
                                         args.fit_width, args.hold_out_every)
    held = sum(v.held_out for v in true_views)
    print(f"fits: {len(true_views) - held} fitted and {held} held-out views of "
          f"{true_views[0].camera.width}x{true_views[0].camera.height}, "
          f"{options.iterations} iterations", flush=True)
    iou = {}
    for label, views in (("true cameras", true_views), ("solved cameras", solved_views)):
        start = time.perf_counter()
        fitted = fit(views, None, None, options)
        iou[label] = float(np.mean(list(fitted.heldout_iou.values())))
        print(f"  {label:15s} held-out IoU {iou[label]:.4f}  fitted IoU "
              f"{fitted.mean_fit_iou:.4f}  {time.perf_counter() - start:.1f} s  "
              f"({fitted.status})", flush=True)
    print(f"held-out IoU, solved - true: {iou['solved cameras'] - iou['true cameras']:+.4f}"
          "   (target within 0.01)")


def main(argv=None) -> None:
    args = parse_args(argv)
    rendered = args.images is None
    if rendered:
        ensure_scene(args.scene, args.samples)
        args.images, args.truth = args.scene / "images", args.scene / "truth"
    truth_by_image = {r.image: r for r in read_camera_file(args.truth, args.images)}
    start = time.perf_counter()
    result = solve_cameras(args.images, ordering=args.ordering,
                           num_threads=args.threads, normalise=False,
                           on_progress=report_progress())
    total = time.perf_counter() - start
    times = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in
                      result.stage_seconds.items())
    print(f"solve ({result.ordering} matching): {times}; total {total:.1f} s")
    print(f"registered {len(result.cameras)} of {len(truth_by_image)} photos, "
          f"{len(result.points)} points")
    for photo in result.unregistered:
        print(f"  not registered: {photo.image}: {photo.reason}")
    if len(result.cameras) >= 3:
        score(result, truth_by_image, truth_z_up=rendered)
    if args.fit:
        compare_fits(result, truth_by_image, args)


if __name__ == "__main__":
    main()
