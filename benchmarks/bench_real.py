"""Real-captures benchmark: from photos without alpha to a fitted mesh, stage by stage.

    python benchmarks/bench_real.py [--iterations 200] [--resolution 160]
        [--scenes temple plain dark green] [--set refine_cameras=true ...]

For each scene, the path the product takes (`bash scripts/demo.sh`, headless --import):
the views at the fit's resolution (photos area-averaged down to `--resolution` on the
long side, in linear light as the add-on sends them), their silhouettes found by the
backend's silhouettes stage in mode auto (`backend.segment.stage`: key + GrabCut, the
multi-view check), the fit from their visual hull on the CPU with every 4th view held
out (`backend.fit.fitting.fit`, default options). Printed per scene:

- key IoU: the keyed masks before the multi-view check against ground truth at the
  fit's resolution (mean / worst view); mask IoU: the stage's final masks (after the
  check's GrabCut refinement), likewise. Temple: the authors' recipe (grey > 0.19,
  dilate 10 px, erode 7 px, on the 640x480 photo, then area-averaged), outside the
  cloth regions where the recipe is wrong (`backend.segment.reference.TEMPLE_CLOTH`).
  Cycles scenes: the Cycles alpha;
- held-out fit IoU: the fitted mesh's silhouette against ground truth on the held-out
  views (temple: the recipe's masks there, cloth regions left out; Cycles: the alpha);
- flagged views, and seconds per stage: import (temple: `camera_import.import_cameras`
  of templeSR_par.txt into Blender; Cycles: none), segmentation, multi-view check, fit;
- the import of a 100-camera turntable (`camera_import.add_turntable`), once.

Cycles scenes: Spot (../shared/data/meshes/spot, orange-grey clay) rendered by Cycles
from 12 cameras on two rings, once with a transparent film (alpha = ground truth) and
once in front of a backdrop colour the camera sees (the world for camera rays; the
object is lit by a neutral grey world and a sun): plain (blue-grey), dark (near black)
or green.

Not a test: it prints figures. The machine may be shared: wall times then vary.
Needs the ``blender`` extra (bpy).
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

import bpy  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from backend.core.camera import blender_camera, orbit_cameras  # noqa: E402
from backend.core.camera_files import load_camera_file  # noqa: E402
from backend.core.messages import View  # noqa: E402
from backend.fit.fitting import FitOptions, fit  # noqa: E402
from backend.fit.fitting import View as FitView  # noqa: E402
from backend.segment.images import read_image  # noqa: E402
from backend.segment.reference import TEMPLE_CLOTH, recipe_mask  # noqa: E402
from backend.segment.stage import (  # noqa: E402
    SilhouetteRequest,
    fit_views,
    fitted_silhouettes,
    segment_views,
)
from benchmarks.bench_fit import parse_set  # noqa: E402
from devtools import cycles_render as cycles  # noqa: E402
from softras_blender.silhouettes import srgb_to_linear  # noqa: E402

TEMPLE_PAR = REPO_ROOT / "data" / "templeSparseRing" / "templeSR_par.txt"
BACKDROPS = {"plain": (0.25, 0.3, 0.4), "dark": (0.004, 0.004, 0.004), "green": (0.05, 0.45, 0.08)}
HOLD_OUT_EVERY = 4


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average (h, w[, C]) down to size (W, H), float32."""
    return cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def fit_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    scale = resolution / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def iou(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    a, b = a > 0.5, b > 0.5
    if keep is not None:
        a, b = a & keep, b & keep
    return float((a & b).sum() / max(1, (a | b).sum()))


def temple_scene(resolution: int):
    """(views, truth masks, regions to leave out, import seconds) of the temple."""
    from softras_blender import camera_import

    bpy.ops.wm.read_factory_settings(use_empty=True)
    start = time.perf_counter()
    camera_import.import_cameras(bpy.context.scene, TEMPLE_PAR)
    import_seconds = time.perf_counter() - start
    views, truths, keeps = [], [], []
    for k, cam in enumerate(load_camera_file(TEMPLE_PAR)):
        photo = read_image(cam.image_path)
        size = fit_size(photo.shape[1], photo.shape[0], resolution)
        rgba = np.ones((size[1], size[0], 4), np.float32)
        rgba[..., :3] = srgb_to_linear(shrink(photo, size))
        camera = blender_camera(**cam.settings).resized(*size)
        views.append(View(camera, rgba, cam.name, held_out=k % HOLD_OUT_EVERY == 1))
        truths.append(shrink(recipe_mask(photo).astype(np.float32), size))
        keep = np.ones(photo.shape[:2], np.float32)
        for rows, cols in TEMPLE_CLOTH.get(cam.name, []):
            keep[rows, cols] = 0.0
        keeps.append(shrink(keep, size) > 0.99)
    return views, truths, keeps, import_seconds


def set_backdrop(scene, colour, ambient=(0.3, 0.3, 0.3)) -> None:
    """The world seen by the camera in `colour` (a backdrop), lighting the object with a
    neutral `ambient` (a studio backdrop, not a coloured sky), through a Light Path mix."""
    cycles.set_world_color(scene, ambient, 1.0)
    tree = scene.world.node_tree
    background = next(n for n in tree.nodes if n.type == "BACKGROUND")
    output = next(n for n in tree.nodes if n.type == "OUTPUT_WORLD")
    seen = tree.nodes.new("ShaderNodeBackground")
    seen.inputs["Color"].default_value = (*colour, 1.0)
    path = tree.nodes.new("ShaderNodeLightPath")
    mix = tree.nodes.new("ShaderNodeMixShader")
    tree.links.new(path.outputs["Is Camera Ray"], mix.inputs["Fac"])
    tree.links.new(background.outputs["Background"], mix.inputs[1])
    tree.links.new(seen.outputs["Background"], mix.inputs[2])
    tree.links.new(mix.outputs["Shader"], output.inputs["Surface"])


def cycles_scene(backdrop: str, resolution: int):
    """(views, Cycles alpha per view, None, 0.0) of Spot in front of `backdrop`."""
    scene = cycles.reset_scene()
    width, height = fit_size(320, 240, resolution)
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    spot = cycles.load_obj(cycles.spot_path())
    material = bpy.data.materials.new("clay")
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (0.75, 0.45, 0.25, 1.0)
    spot.data.materials.clear()
    spot.data.materials.append(material)
    cycles.add_sun(scene, (0.4, -0.6, 1.0), strength=3.0)
    views, truths = [], []
    matrices = orbit_cameras(6, [-15.0, 30.0], 4.0, azimuth_offset_deg=10.0)
    for k, matrix in enumerate(matrices):
        params = {"matrix_world": matrix.tolist(), "lens": 50.0}
        cam = cycles.add_camera(scene, params, name=f"{backdrop}.{k:02d}")
        cycles.configure_cycles(scene, samples=8, filter_width=1.0)
        cycles.set_world_color(scene, (0.3, 0.3, 0.3), 1.0)
        truth = cycles.render_rgba(scene, cam)[..., 3]
        set_backdrop(scene, BACKDROPS[backdrop])
        scene.render.film_transparent = False
        rgba = cycles.render_rgba(scene, cam)
        rgba[..., 3] = 1.0
        camera = blender_camera(matrix_world=matrix, resolution_x=width, resolution_y=height,
                                lens=50.0)
        views.append(View(camera, np.clip(rgba, 0, 1).astype(np.float32), cam.name,
                          held_out=k % HOLD_OUT_EVERY == 1))
        truths.append(truth)
    return views, truths, None, 0.0


def run_scene(name: str, resolution: int, options: FitOptions) -> dict:
    views, truths, keeps, import_seconds = (temple_scene(resolution) if name == "temple"
                                            else cycles_scene(name, resolution))
    keeps = keeps or [None] * len(views)
    first = segment_views(views, SilhouetteRequest("auto", check=False))
    first_iou = [iou(m, t, k) for m, t, k in zip(first.masks, truths, keeps, strict=True)]
    outcome = segment_views(views, SilhouetteRequest("auto"))
    mask_iou = [iou(m, t, k) for m, t, k in zip(outcome.masks, truths, keeps, strict=True)]
    fitted = [FitView(v.camera, v.image, v.name, v.held_out) for v in fit_views(views, outcome)]
    start = time.perf_counter()
    result = fit(fitted, None, None, options)
    fit_seconds = time.perf_counter() - start
    held = [k for k, v in enumerate(views) if v.held_out]
    outlines = fitted_silhouettes(result.vertices, result.faces, [views[k] for k in held])
    heldout = [iou(s, truths[k], keeps[k]) for s, k in zip(outlines, held, strict=True)]
    return {"scene": name, "views": len(views), "size": views[0].camera.width,
            "first_iou": first_iou, "mask_iou": mask_iou, "heldout_iou": heldout,
            "flagged": [c.name for c in outcome.flagged()], "import": import_seconds,
            "segmentation": outcome.seconds["segmentation"],
            "consistency": outcome.seconds["consistency"], "fit": fit_seconds}


def turntable_import_seconds(count: int = 100) -> float:
    from softras_blender import camera_import

    bpy.ops.wm.read_factory_settings(use_empty=True)
    start = time.perf_counter()
    camera_import.add_turntable(bpy.context.scene, camera_import.TurntableSpec(count=count))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--scenes", nargs="+", default=["temple", "plain", "dark", "green"],
                        choices=["temple", "plain", "dark", "green"])
    parser.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                        help="FitOptions overrides, e.g. refine_cameras=true")
    args = parser.parse_args()
    options = FitOptions(**{"iterations": args.iterations, "device": "cpu",
                            **parse_set(args.set)})
    import softras_blender

    softras_blender.register()
    print(f"{'scene':8} {'views':>5} {'px':>4}  {'key IoU':>11}  {'mask IoU mean/min':>17}  "
          f"{'held-out IoU mean/min':>21}  {'import':>6} {'segment':>7} {'check':>6} "
          f"{'fit':>6}  flagged")
    for name in args.scenes:
        r = run_scene(name, args.resolution, options)
        print(f"{r['scene']:8} {r['views']:5d} {r['size']:4d}  "
              f"{np.mean(r['first_iou']):5.3f}/{min(r['first_iou']):.3f}  "
              f"{np.mean(r['mask_iou']):8.3f}/{min(r['mask_iou']):.3f}  "
              f"{np.mean(r['heldout_iou']):12.3f}/{min(r['heldout_iou']):.3f}  "
              f"{r['import']:6.2f} {r['segmentation']:7.2f} {r['consistency']:6.2f} "
              f"{r['fit']:6.1f}  {', '.join(r['flagged']) or '-'}", flush=True)
    print(f"import of a 100-camera turntable: {turntable_import_seconds():.3f} s")


if __name__ == "__main__":
    main()
