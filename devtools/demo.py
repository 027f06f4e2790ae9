"""The demo's Blender steps: the synthetic scene (Suzanne rendered by Cycles from many
cameras, fitted from Blender's default cube), its contact sheet, and a shaded render of a
fit (photo | start | fit with ``--before``).

    python devtools/demo.py scene --out out/demo [--cameras 24 --size 128]
    python devtools/demo.py sheet --scene out/demo/scene.blend --fitted out/demo/fitted.blend \
        --out out/demo/contact_sheet.png
    python devtools/demo.py shaded --fitted out/demo/fitted.blend --out out/demo/shaded.png
    bash scripts/demo.sh               # the temple photos: import -> silhouettes -> fit
    bash scripts/demo.sh --synthetic   # scene -> headless fit -> contact sheet

`build_scene` makes the input a user would have: cameras whose background images
are Cycles renders (8-bit RGBA PNGs with a transparent film, alpha = silhouette) of
a target that is then removed, plus an icosphere to fit. The tests build their
scenes with it too. `contact_sheet` renders the fitted mesh's silhouettes with
Cycles from the same cameras and lays them out next to the targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: Python put devtools/ first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from backend.core.camera import orbit_cameras  # noqa: E402
from devtools import cycles_render as cycles  # noqa: E402

TARGET_COLOR = (0.8, 0.35, 0.1)  # linear RGB of the target's material
DISTANCE = 5.0  # cameras from the origin; a 50 mm lens then sees 3.6 units across


def camera_rig(count: int) -> list[np.ndarray]:
    """World matrices of ``count`` cameras around the origin on up to three rings."""
    if count >= 12 and count % 3 == 0:
        return orbit_cameras(count // 3, [-25.0, 15.0, 50.0], DISTANCE, azimuth_offset_deg=15.0)
    if count % 2 == 0 and count >= 4:
        return orbit_cameras(count // 2, [-15.0, 35.0], DISTANCE, azimuth_offset_deg=15.0)
    return orbit_cameras(count, [20.0], DISTANCE, azimuth_offset_deg=15.0)


def _diffuse_material(color) -> bpy.types.Material:
    """A flat diffuse-lit material of one colour."""
    material = bpy.data.materials.new("target")
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.8
    return material


def add_target(kind: str = "SUZANNE") -> bpy.types.Object:
    """The object the cameras photograph: Suzanne (smoothed) or a torus."""
    if kind == "SUZANNE":
        bpy.ops.mesh.primitive_monkey_add(size=2.0)
        obj = bpy.context.active_object
        modifier = obj.modifiers.new("smooth", "SUBSURF")
        modifier.levels = modifier.render_levels = 1
        bpy.ops.object.shade_smooth()
    elif kind == "TORUS":
        bpy.ops.mesh.primitive_torus_add(major_radius=1.0, minor_radius=0.4)
        obj = bpy.context.active_object
    else:
        raise ValueError(f"unknown target {kind!r}: use SUZANNE or TORUS")
    obj.name = "Target"
    obj.data.materials.append(_diffuse_material(TARGET_COLOR))
    return obj


def render_cameras(scene, cameras, folder: Path) -> list[Path]:
    """Render every camera to ``folder/<camera name>.png`` (8-bit RGBA, transparent film)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = scene.render.image_settings
    settings.file_format = "PNG"
    settings.color_mode = "RGBA"
    settings.color_depth = "8"
    paths = []
    for cam in cameras:
        scene.camera = cam
        path = folder / f"{cam.name}.png"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True, scene=scene.name)
        if not path.is_file():
            raise RuntimeError(f"Cycles did not write {path}")
        paths.append(path)
    return paths


def build_scene(out_dir: Path, *, cameras: int = 24, size: int = 128, samples: int = 4,
                target: str = "SUZANNE", start: str = "ICOSPHERE",
                background_images: bool = True) -> Path:
    """Build and save ``out_dir/scene.blend``; returns its path.

    cameras: how many (see `camera_rig`); size: render width = height in pixels;
    start: the mesh to fit, "CUBE" (Blender's default cube, named "Cube"), "ICOSPHERE"
    (named "Icosphere"), "UV_SPHERE" (named "Sphere") or "NONE"; background_images:
    attach each render to its camera as a background image (else the renders are only
    written to ``out_dir/renders``).
    """
    out_dir = Path(out_dir).resolve()
    scene = cycles.reset_scene()
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    cycles.configure_cycles(scene, samples=samples, filter_width=1.0)
    scene.view_settings.view_transform = "Standard"
    cycles.set_world_color(scene, (0.4, 0.4, 0.4), 1.0)
    cycles.add_sun(scene, (0.5, -0.7, 1.0), strength=2.5)
    target_obj = add_target(target)
    cams = []
    for i, matrix in enumerate(camera_rig(cameras)):
        cam = cycles.add_camera(scene, {"matrix_world": matrix.tolist(), "lens": 50.0},
                                name=f"Camera.{i:02d}")
        cams.append(cam)
    paths = render_cameras(scene, cams, out_dir / "renders")

    mesh = target_obj.data
    bpy.data.objects.remove(target_obj)
    bpy.data.meshes.remove(mesh)
    if background_images:
        for cam, path in zip(cams, paths, strict=True):
            image = bpy.data.images.load(str(path))
            slot = cam.data.background_images.new()
            slot.image = image
            cam.data.show_background_images = True
    if start == "ICOSPHERE":
        # 5120 faces: a coarser sphere cannot follow Suzanne's ears (320 faces fit to IoU
        # 0.81, 1280 to 0.97, 5120 to 0.99 on the fitted views).
        bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=5, radius=1.0)
        bpy.context.active_object.name = "Icosphere"
    elif start == "CUBE":
        bpy.ops.mesh.primitive_cube_add(size=2.0)
        bpy.context.active_object.name = "Cube"
    elif start == "UV_SPHERE":
        bpy.ops.mesh.primitive_uv_sphere_add(segments=24, ring_count=12, radius=1.0)
        bpy.context.active_object.name = "Sphere"
    elif start != "NONE":
        raise ValueError(f"unknown start {start!r}")
    path = out_dir / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path), relative_remap=False)
    return path


def silhouettes(scene, cameras, objects) -> list[np.ndarray]:
    """Cycles alpha (H, W) of ``objects`` alone from each camera (row 0 at the top)."""
    hidden = [o for o in scene.objects if o.type == "MESH" and o not in objects]
    for o in hidden:
        o.hide_render = True
    cycles.configure_cycles(scene, samples=1, filter_width=0.01)
    try:
        return [cycles.render_rgba(scene, cam)[..., 3] for cam in cameras]
    finally:
        for o in hidden:
            o.hide_render = False


def contact_sheet(scene_path: Path, fitted_path: Path, out_path: Path,
                  fitted_object: str | None = None, columns: int = 6) -> dict:
    """A PNG with, per camera, the target silhouette, the fitted one and their overlap
    (white: both, red: target only, blue: fitted only) with the view's IoU.

    Returns {"iou": {camera: IoU}, "mean_iou": ...} measured on Cycles silhouettes.
    """
    from PIL import Image, ImageDraw

    from softras_blender import scene_export  # bpy-side helpers, importable by path

    bpy.ops.wm.open_mainfile(filepath=str(Path(fitted_path).resolve()))
    scene = bpy.context.scene
    cams = sorted((o for o in scene.objects if o.type == "CAMERA"
                   and scene_export.background_image(o) is not None), key=lambda o: o.name)
    if fitted_object is None:
        fitted = [o for o in scene.objects if o.type == "MESH" and o.data.shape_keys
                  and "SoftRas Fit" in o.data.shape_keys.key_blocks]
        fitted += [o for o in scene.objects if o.name.endswith("SoftRas Fit")]
    else:
        fitted = [scene.objects[fitted_object]]
    if len(fitted) != 1:
        raise ValueError(f"expected one fitted object in {fitted_path}, found "
                         f"{[o.name for o in fitted]}: pass fitted_object")
    ours = silhouettes(scene, cams, fitted)
    targets = []
    for cam in cams:
        image = scene_export.background_image(cam).image
        targets.append(scene_export.image_pixels(image)[::-1, :, 3])
    tiles, iou = [], {}
    for cam, target, fit in zip(cams, targets, ours, strict=True):
        t, f = target > 0.5, fit > 0.5
        iou[cam.name] = float((t & f).sum() / max(1, (t | f).sum()))
        overlap = np.zeros(t.shape + (3,), np.uint8)
        overlap[t & f] = 255
        overlap[t & ~f] = (220, 40, 40)
        overlap[~t & f] = (40, 90, 230)
        grey = [np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)
                for m in (target, fit)]
        tile = Image.fromarray(np.concatenate(grey + [overlap], axis=1))
        canvas = Image.new("RGB", (tile.width, tile.height + 16), (30, 30, 30))
        canvas.paste(tile, (0, 16))
        ImageDraw.Draw(canvas).text((3, 2), f"{cam.name}  IoU {iou[cam.name]:.3f}",
                                    fill=(255, 255, 255))
        tiles.append(canvas)
    rows = (len(tiles) + columns - 1) // columns
    w, h = tiles[0].size
    sheet = Image.new("RGB", (columns * (w + 4), rows * (h + 4) + 20), (10, 10, 10))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (w + 4), 20 + (i // columns) * (h + 4)))
    mean = float(np.mean(list(iou.values())))
    ImageDraw.Draw(sheet).text(
        (4, 4), f"target | fitted | overlap (white both, red target only, blue fitted only)"
                f"   mean IoU {mean:.3f} (Cycles silhouettes)", fill=(255, 255, 255))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return {"iou": iou, "mean_iou": mean}


def shaded_render(fitted_path: Path, out_path: Path, cameras: int = 3, size: int = 320,
                  samples: int = 8, before: str | None = None) -> list[str]:
    """A PNG of the fitted object shaded by Cycles (grey clay, one sun), seen through
    ``cameras`` of the scene's cameras spread over the ring, each next to its photo
    (the camera's background image); ``before``: the name of the mesh the fit started
    from, shown shaded between the two (photo | before | after). Returns the camera
    names used."""
    from softras_blender import scene_export  # bpy-side helpers, importable by path

    bpy.ops.wm.open_mainfile(filepath=str(Path(fitted_path).resolve()))
    scene = bpy.context.scene
    fitted = [o for o in scene.objects if o.type == "MESH" and o.name.endswith("SoftRas Fit")]
    fitted += [o for o in scene.objects if o.type == "MESH" and o.data.shape_keys
               and "SoftRas Fit" in o.data.shape_keys.key_blocks]
    if not fitted:
        raise ValueError(f"{fitted_path} holds no fitted object (named '... SoftRas Fit')")
    cams = sorted((o for o in scene.objects if o.type == "CAMERA"
                   and scene_export.background_image(o) is not None), key=lambda o: o.name)
    chosen = [cams[round(i * len(cams) / cameras)] for i in range(cameras)]
    scale = size / max(scene.render.resolution_x, scene.render.resolution_y)
    scene.render.resolution_percentage = max(1, int(round(100 * scale)))
    cycles.configure_cycles(scene, samples=samples, filter_width=1.0)
    cycles.set_world_color(scene, (0.3, 0.3, 0.3), 1.0)
    shown = [scene.objects[before]] if before is not None else []
    shown.append(fitted[0])
    for obj in scene.objects:
        if obj.type == "MESH":
            obj.hide_render = True
    for obj in shown:
        obj.data.materials.clear()
        obj.data.materials.append(_diffuse_material((0.7, 0.7, 0.7)))
    rows = []
    for cam in chosen:
        photo = scene_export.image_pixels(scene_export.background_image(cam).image)[::-1]
        row = []
        for obj in shown:
            row.append(_clay_render(scene, cam, obj))
        rows.append(np.concatenate([_resize(photo[..., :3], row[0].shape[:2])] + row, axis=1))
    from PIL import Image

    sheet = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255 + 0.5).astype(np.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out_path)
    return [c.name for c in chosen]


def _clay_render(scene, cam, obj) -> np.ndarray:
    """(h, w, 3) sRGB render of ``obj`` alone (the scene's meshes hidden from render)
    seen by ``cam``, lit by a sun just above the camera."""
    obj.hide_render = False
    sun = cycles.add_sun(scene, np.array(cam.matrix_world)[:3, 3] + [0.0, 0.0, 0.5],
                         strength=1.5)
    rgba = cycles.render_rgba(scene, cam)
    bpy.data.objects.remove(sun)
    obj.hide_render = True
    return _to_srgb(rgba[..., :3] * rgba[..., 3:] + 0.05 * (1 - rgba[..., 3:]))


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    c = np.clip(linear, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def _resize(image: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of (h, w, C) to ``shape`` (H, W)."""
    rows = (np.arange(shape[0]) * image.shape[0] / shape[0]).astype(int)
    cols = (np.arange(shape[1]) * image.shape[1] / shape[1]).astype(int)
    return image[rows][:, cols]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scene = sub.add_parser("scene", help="build the demo scene")
    scene.add_argument("--out", type=Path, default=Path("out/demo"))
    scene.add_argument("--cameras", type=int, default=24)
    scene.add_argument("--size", type=int, default=128)
    scene.add_argument("--samples", type=int, default=4)
    scene.add_argument("--start", choices=("CUBE", "ICOSPHERE", "UV_SPHERE", "NONE"),
                       default="ICOSPHERE", help="the mesh to fit")
    sheet = sub.add_parser("sheet", help="contact sheet of target vs fitted silhouettes")
    sheet.add_argument("--scene", type=Path, required=True)
    sheet.add_argument("--fitted", type=Path, required=True)
    sheet.add_argument("--out", type=Path, required=True)
    shaded = sub.add_parser("shaded", help="Cycles render of the fitted object beside photos")
    shaded.add_argument("--fitted", type=Path, required=True)
    shaded.add_argument("--out", type=Path, required=True)
    shaded.add_argument("--cameras", type=int, default=3)
    shaded.add_argument("--before", help="the mesh the fit started from, shown between the "
                        "photo and the fit")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.command == "scene":
        path = build_scene(args.out, cameras=args.cameras, size=args.size, samples=args.samples,
                           start=args.start)
        print(f"demo scene: {path} ({args.cameras} cameras, {args.size}x{args.size}, "
              f"{time.perf_counter() - start:.1f} s)")
    elif args.command == "shaded":
        names = shaded_render(args.fitted, args.out, args.cameras, before=args.before)
        print(f"shaded render: {args.out} (cameras {', '.join(names)}, "
              f"{time.perf_counter() - start:.1f} s)")
    else:
        stats = contact_sheet(args.scene, args.fitted, args.out)
        print(f"contact sheet: {args.out} (mean Cycles IoU {stats['mean_iou']:.3f}, "
              f"{time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
