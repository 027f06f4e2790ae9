"""Render the Spot cow through the soft rasterizer (CPU) next to Cycles, from the same cameras.

    python devtools/render_spot.py [--out out] [--views 3] [--width 320 --height 240]
    python -m devtools.render_spot ...      (the same)

Writes, per view i, ``spot_softras_<i>.png`` (ours) and ``spot_cycles_<i>.png``
(Blender's Cycles), and ``spot_compare.png`` (ours on top, Cycles below), all on a
white background, and prints how long each step took.

Both renderers get the same camera through `devtools.cycles_render.camera_params` and
`backend.core.camera.blender_camera`, and the same light: an ambient term (a uniform
white world in Cycles) plus one directional light (a sun). Ours shades per face
with per-vertex colours sampled from Spot's texture; Cycles shades per pixel from
the texture, with shadows and occlusion, so the images differ in shading detail but
must agree in shape and placement.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Run as a script, Python puts devtools/ first on sys.path; keep imports rooted at
# the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from backend.core.camera import blender_camera, orbit_cameras  # noqa: E402
from backend.render.renderer import Cameras, Lighting, RenderSettings, render  # noqa: E402
from devtools import cycles_render as cycles  # noqa: E402

BACKGROUND = (1.0, 1.0, 1.0)
LIGHT = Lighting(ambient=0.45, directional=0.65, direction=(0.4, -0.6, 0.7))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--views", type=int, default=3, help="cameras around the cow")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--lens", type=float, default=50.0, help="focal length in mm")
    parser.add_argument("--sigma", type=float, default=0.1,
                        help="soft rasterizer edge softness in squared pixels")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    args = parser.parse_args(argv)
    if args.views < 1 or args.width < 1 or args.height < 1:
        parser.error("--views, --width and --height must be positive")
    return args


def build_scene(samples: int):
    """Spot with a diffuse-only material, a sun and an ambient world; returns (scene, obj)."""
    scene = cycles.reset_scene()
    obj = cycles.load_obj(cycles.spot_path())
    for node in obj.data.materials[0].node_tree.nodes:
        if node.type == "BSDF_PRINCIPLED":  # diffuse only, like the rasterizer's Lambert term
            node.inputs["Specular IOR Level"].default_value = 0.0
            node.inputs["Roughness"].default_value = 1.0
    # A white Lambertian surface facing a sun of strength S leaves with S / pi.
    cycles.add_sun(scene, LIGHT.direction, strength=LIGHT.directional * math.pi)
    cycles.set_world_color(scene, (1.0, 1.0, 1.0), strength=LIGHT.ambient)
    cycles.configure_cycles(scene, samples=samples, filter_width=1.5, max_bounces=0)
    return scene, obj


def over_background(rgba: np.ndarray) -> np.ndarray:
    """Premultiplied linear RGBA (..., 4) over `BACKGROUND` -> sRGB-encoded 8-bit RGB."""
    rgb = rgba[..., :3] + (1.0 - rgba[..., 3:4]) * np.asarray(BACKGROUND, dtype=np.float32)
    return np.round(cycles.linear_to_srgb(rgb) * 255.0).astype(np.uint8)


def main(argv=None) -> None:
    args = parse_args(argv)
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    scene, obj = build_scene(args.samples)
    vertices, faces = cycles.mesh_arrays(obj)
    colors = cycles.vertex_colors_from_texture(obj)
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    print(f"scene, mesh ({len(vertices)} vertices, {len(faces)} faces) and vertex colours: "
          f"{time.perf_counter() - start:.2f} s")

    params = []
    for i, world in enumerate(orbit_cameras(args.views, [20.0], 4.2, target=centre,
                                            azimuth_offset_deg=-60.0)):
        cam = cycles.add_camera(scene, {"matrix_world": world, "resolution_x": args.width,
                                        "resolution_y": args.height, "lens": args.lens},
                                name=f"view_{i}")
        params.append((cam, cycles.camera_params(cam, scene)))

    start = time.perf_counter()
    cams = Cameras.from_matrices([blender_camera(**p) for _, p in params])
    settings = RenderSettings(sigma=args.sigma, background_color=BACKGROUND, lighting=LIGHT)
    with torch.no_grad():
        ours = render(torch.tensor(vertices, dtype=torch.float32), torch.tensor(faces), cams,
                      torch.tensor(colors), settings, backend="cpu").numpy()
    ours_time = time.perf_counter() - start
    # RGB is already composited over the background colour; only encode it.
    ours_png = np.round(cycles.linear_to_srgb(ours[..., :3]) * 255.0).astype(np.uint8)
    print(f"soft rasterizer (CPU, {args.views} views of {args.width}x{args.height}): "
          f"{ours_time:.2f} s")

    theirs_png = []
    start = time.perf_counter()
    for cam, _ in params:
        theirs_png.append(over_background(cycles.render_rgba(scene, cam)))
    cycles_time = time.perf_counter() - start
    print(f"Cycles (CPU, {args.samples} samples, {args.views} views): {cycles_time:.2f} s")

    for i in range(args.views):
        Image.fromarray(ours_png[i]).save(args.out / f"spot_softras_{i}.png")
        Image.fromarray(theirs_png[i]).save(args.out / f"spot_cycles_{i}.png")
    grid = np.concatenate([np.concatenate(list(ours_png), axis=1),
                           np.concatenate(theirs_png, axis=1)], axis=0)
    Image.fromarray(grid).save(args.out / "spot_compare.png")
    print(f"wrote {2 * args.views + 1} images to {args.out.resolve()}")


if __name__ == "__main__":
    main()
