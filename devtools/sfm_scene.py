"""Photos for structure from motion: Cycles renders of the textured Spot cow on a textured
floor from a ring of known cameras, and those cameras as a COLMAP text model.

    python -m devtools.sfm_scene --out out/sfm [--azimuths 8 --elevations 20 35 50]
                                 [--width 640 --height 480] [--samples 16]

Writes ``<out>/images/view_<ring>_<i>.png`` (8-bit sRGB, opaque) and the true cameras
as ``<out>/truth/{cameras,images,points3D}.txt`` (written by
`backend.core.camera_files.write_colmap_text`, read back by `read_colmap`), so
`backend.sfm` can be scored against them. The floor carries a procedural texture
(noise and Voronoi cells, deterministic) because a cow alone on a plain background
gives SIFT too few features between distant views.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# Run as a script, Python puts devtools/ first on sys.path; keep imports rooted at
# the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from backend.core.camera import blender_camera, orbit_cameras  # noqa: E402
from backend.core.camera_files import CameraRecord, write_colmap_text  # noqa: E402
from devtools import cycles_render as cycles  # noqa: E402

FLOOR_SIZE = 10.0  # scene units; Spot is about 1.2 long
SUN_DIRECTION = (0.4, -0.6, 0.7)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/sfm"), help="output folder")
    parser.add_argument("--azimuths", type=int, default=8, help="cameras per ring")
    parser.add_argument("--elevations", type=float, nargs="+", default=[20.0, 35.0, 50.0],
                        help="ring elevations in degrees")
    parser.add_argument("--distance", type=float, default=3.5, help="ring radius (to the cow)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--lens", type=float, default=35.0, help="focal length in mm")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    return parser.parse_args(argv)


def ground_grid(height: float, count: int = 161) -> tuple[np.ndarray, np.ndarray]:
    """A FLOOR_SIZE square of gentle hills around a flat middle, as a triangle grid.

    Returns vertices (count * count, 3) float64 and faces (F, 3) int64. The hills give
    the photos depth beyond one plane: matches on a plane alone leave the focal
    length undetermined, and COLMAP then fails to start a model.
    """
    side = np.linspace(-FLOOR_SIZE / 2.0, FLOOR_SIZE / 2.0, count)
    x, y = np.meshgrid(side, side, indexing="xy")
    flat_middle = 1.0 - np.exp(-(x**2 + y**2) / 1.5)
    hills = np.sin(1.7 * x + 0.3) * np.cos(1.3 * y) + 0.5 * np.sin(3.1 * x - 2.3 * y + 1.0)
    z = height + 0.25 * flat_middle * hills
    vertices = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    corner = (np.arange(count - 1)[None, :] + count * np.arange(count - 1)[:, None]).ravel()
    faces = np.concatenate([np.stack([corner, corner + 1, corner + count + 1], axis=1),
                            np.stack([corner, corner + count + 1, corner + count], axis=1)])
    return vertices, faces.astype(np.int64)


def _add_floor(scene, height: float):
    """The hilly ground (`ground_grid`) with a high-contrast procedural texture."""
    floor = cycles.add_mesh(*ground_grid(height), name="floor", scene=scene)
    material = cycles.bpy.data.materials.new("floor")
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 1.0
    bsdf.inputs["Specular IOR Level"].default_value = 0.0
    # Sharp-edged blobs at several scales (thresholded fractal noise) over coloured
    # cells: corners and blobs for SIFT everywhere, nothing periodic to mismatch.
    coordinates = nodes.new("ShaderNodeTexCoord")  # object space: scene units, no stretch
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 1.4
    noise.inputs["Detail"].default_value = 15.0
    noise.inputs["Roughness"].default_value = 0.65
    ramp = nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.interpolation = "CONSTANT"
    ramp.color_ramp.elements[0].color = (0.02, 0.02, 0.02, 1.0)
    ramp.color_ramp.elements[1].position = 0.5
    ramp.color_ramp.elements[1].color = (1.0, 1.0, 1.0, 1.0)
    cells = nodes.new("ShaderNodeTexVoronoi")
    cells.inputs["Scale"].default_value = 0.4
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.blend_type = "MULTIPLY"
    mix.inputs["Factor"].default_value = 1.0
    links.new(coordinates.outputs["Object"], noise.inputs["Vector"])
    links.new(coordinates.outputs["Object"], cells.inputs["Vector"])
    links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], mix.inputs["A"])
    links.new(cells.outputs["Color"], mix.inputs["B"])
    links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    floor.data.materials.append(material)
    return floor


def build_scene(samples: int):
    """Spot (textured, diffuse) standing on the textured floor, a sun and a grey sky.

    Returns (scene, centre): ``centre`` (3,) float64 is the middle of Spot's bounding box.
    """
    scene = cycles.reset_scene()
    spot = cycles.load_obj(cycles.spot_path())
    for node in spot.data.materials[0].node_tree.nodes:
        if node.type == "BSDF_PRINCIPLED":
            node.inputs["Specular IOR Level"].default_value = 0.0
            node.inputs["Roughness"].default_value = 1.0
    vertices, _ = cycles.mesh_arrays(spot)
    _add_floor(scene, float(vertices[:, 2].min()))
    cycles.add_sun(scene, SUN_DIRECTION, strength=2.0)
    cycles.set_world_color(scene, (0.8, 0.85, 0.9), strength=0.6)
    cycles.configure_cycles(scene, samples=samples, filter_width=1.5, max_bounces=1)
    scene.render.film_transparent = False  # photos have a background
    return scene, (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0


def render_views(out: Path, *, azimuths: int = 8, elevations=(20.0, 35.0, 50.0),
                 distance: float = 3.5, width: int = 640, height: int = 480,
                 lens: float = 35.0, samples: int = 16) -> list[CameraRecord]:
    """Render the ring into ``out/images`` and write the truth to ``out/truth``.

    Returns the true cameras, one `CameraRecord` per image, in render order (ring by
    ring, azimuth increasing: a turntable order).
    """
    from PIL import Image

    if azimuths < 1 or not elevations or width < 1 or height < 1:
        raise ValueError("azimuths, elevations, width and height must be positive")
    images = Path(out) / "images"
    images.mkdir(parents=True, exist_ok=True)
    scene, centre = build_scene(samples)
    records = []
    for ring, elevation in enumerate(elevations):
        worlds = orbit_cameras(azimuths, [elevation], distance, target=centre,
                               azimuth_offset_deg=10.0 + ring * 360.0 / azimuths / 2.0)
        for i, world in enumerate(worlds):
            name = f"view_{ring}_{i:02d}"
            cam = cycles.add_camera(scene, {"matrix_world": world, "resolution_x": width,
                                            "resolution_y": height, "lens": lens}, name=name)
            rgb = cycles.render_rgba(scene, cam)[..., :3]
            png = np.round(np.clip(cycles.linear_to_srgb(rgb), 0, 1) * 255).astype(np.uint8)
            Image.fromarray(png).save(images / f"{name}.png")
            truth = blender_camera(**cycles.camera_params(cam, scene))
            records.append(CameraRecord(name=name, image=f"{name}.png", camera=truth))
    write_colmap_text(Path(out) / "truth", records)
    return records


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    records = render_views(args.out, azimuths=args.azimuths, elevations=args.elevations,
                           distance=args.distance, width=args.width, height=args.height,
                           lens=args.lens, samples=args.samples)
    print(f"rendered {len(records)} views of {args.width}x{args.height} into "
          f"{(args.out / 'images').resolve()} in {time.perf_counter() - start:.1f} s; "
          f"truth in {(args.out / 'truth').resolve()}")


if __name__ == "__main__":
    main()
