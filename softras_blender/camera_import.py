"""Cameras from calibration files and turntables into the scene, and back out to files.

Only reads and writes Blender data: reading the formats, the camera conversion and the
turntable geometry live in the bpy-free `backend.core.camera_files` and
`backend.core.camera`. Every entry point checks everything it can before touching
the scene and, when it fails, leaves the scene as it was (images it loaded are
removed again), so an operator returning CANCELLED needs no undo.

Headless use: `import_cameras(scene, path, images_dir)` and `export_cameras(scene,
path, "TRANSFORMS" | "COLMAP")`; `add_turntable(scene, TurntableSpec(...))`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import mathutils
import numpy as np

from . import scene_export
from .backend.core import camera as camera_model
from .backend.core import camera_files
from .backend.core.camera_files import CameraFileError, ImportedCamera

MASK_PROPERTY = scene_export.MASK_PROPERTY  # the camera's mask file, from the camera file


class CameraImportError(ValueError):
    """The cameras cannot be added as asked; the message says what to change."""


# --- into the scene ------------------------------------------------------------------


def import_cameras(scene, path, images_dir=None) -> bpy.types.Collection:
    """Cameras of a camera file (COLMAP model, transforms.json, Middlebury *_par.txt)
    with their images as background images, in a new collection named after the file.

    Raises CameraFileError (file, line, reason; images missing) or CameraImportError
    (images of mixed sizes, or not the size the file says) and then changes nothing.
    """
    cameras = camera_files.load_camera_file(path, images_dir or None)
    return add_cameras(scene, cameras, collection_name(path))


def collection_name(path) -> str:
    """The new collection's name: the camera file's name without its extension, or the
    model's folder for COLMAP (``project/sparse/0`` gives "sparse 0")."""
    path = Path(path)
    if path.name.lower() in camera_files.COLMAP_FILE_NAMES:
        path = path.parent
    name = path.stem if path.is_file() else path.name
    return f"{path.parent.name} {name}" if name.isdigit() else name


def add_cameras(scene, cameras: list[ImportedCamera], name: str) -> bpy.types.Collection:
    """A new collection in ``scene`` holding one camera object per entry, named after it,
    with its image (if any) as a background image that fills the frame exactly; the
    scene's render size and pixel aspect are set from the first camera's settings
    (`camera.blender_scene_settings` made them shared)."""
    if not cameras:
        raise CameraImportError("there are no cameras to add")
    images = load_images(cameras)
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)
    display_size = camera_display_size(cameras)
    objects = []
    for cam, image in zip(cameras, images, strict=True):
        obj = bpy.data.objects.new(cam.name, bpy.data.cameras.new(cam.name))
        collection.objects.link(obj)
        apply_camera_settings(obj, cam.settings)
        obj.data.display_size = display_size
        if image is not None:
            attach_background(obj, image, cam.settings)
        if cam.mask_path is not None:
            obj[MASK_PROPERTY] = str(cam.mask_path)
        objects.append(obj)
    apply_render_settings(scene, cameras[0].settings)
    if scene.camera is None:
        scene.camera = objects[0]
    return collection


def apply_camera_settings(obj, settings: dict) -> None:
    """Set a camera object from `blender_camera` keyword arguments (render settings
    excepted: they belong to the scene, see `apply_render_settings`)."""
    obj.matrix_world = mathutils.Matrix(np.asarray(settings["matrix_world"]).tolist())
    data = obj.data
    data.type = settings["camera_type"]
    for key in ("lens", "sensor_width", "sensor_height", "sensor_fit", "shift_x", "shift_y",
                "ortho_scale"):
        setattr(data, key, settings[key])


def apply_render_settings(scene, settings: dict) -> None:
    render = scene.render
    for key in ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x",
                "pixel_aspect_y"):
        setattr(render, key, settings[key])


def attach_background(obj, image, settings: dict) -> None:
    """Show ``image`` behind the camera's view, filling its frame exactly: STRETCH when
    pixels are not square (FIT would keep the image's own aspect), else FIT."""
    data = obj.data
    data.show_background_images = True
    slot = data.background_images.new()
    slot.image = image
    square = settings["pixel_aspect_x"] == settings["pixel_aspect_y"]
    slot.frame_method = "FIT" if square else "STRETCH"
    slot.alpha = 1.0


def camera_display_size(cameras) -> float:
    """A viewport size for the cameras' pyramids: a fifth of the rig's radius (the
    median distance of the camera centres from their mean), 1 for a single camera."""
    centres = np.array([np.asarray(c.settings["matrix_world"])[:3, 3] for c in cameras])
    radius = float(np.median(np.linalg.norm(centres - centres.mean(axis=0), axis=1)))
    return 0.2 * radius if radius > 1e-6 else 1.0


def load_images(cameras) -> list:
    """The cameras' images as Blender images (None where a camera has no image path).

    Each must have its camera's render size. On any error the images this call loaded
    are removed again and CameraImportError says which images differ.
    """
    before = set(bpy.data.images)
    try:
        images = [_load_image(cam.image_path) if cam.image_path is not None else None
                  for cam in cameras]
        sizes = [_image_size(image, cam.image_path) if image is not None else None
                 for cam, image in zip(cameras, images, strict=True)]
        _check_sizes(cameras, images, sizes)
    except Exception:
        for image in set(bpy.data.images) - before:
            bpy.data.images.remove(image)
        raise
    return images


def _load_image(path: Path):
    try:
        return bpy.data.images.load(str(path), check_existing=True)
    except RuntimeError as exc:
        raise CameraImportError(f"cannot read the image {path}: {exc}") from exc


def _image_size(image, path: Path) -> tuple[int, int]:
    """(width, height) from the file's header (PNG, JPEG: fast), else from Blender, which
    decodes the whole image to know its size."""
    try:
        return camera_files.image_size(path)
    except CameraFileError:
        size = tuple(image.size)
        if size == (0, 0):
            raise CameraImportError(f"the image {path} has no pixels (unreadable or "
                                    "empty)") from None
        return size


def _check_sizes(cameras, images, sizes) -> None:
    """All images one size, and the size their camera file gives."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for image, size in zip(images, sizes, strict=True):
        if image is not None:
            by_size.setdefault(size, []).append(image.name)
    if len(by_size) > 1:
        listed = "; ".join(f"{w}x{h}: {', '.join(names[:3])}"
                           + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                           for (w, h), names in by_size.items())
        raise CameraImportError(f"the images have mixed sizes ({listed}): a Blender scene "
                                "renders one size, so use images of one size")
    for cam, size in zip(cameras, sizes, strict=True):
        expected = (cam.settings["resolution_x"], cam.settings["resolution_y"])
        if size is not None and size != expected:
            raise CameraImportError(
                f"the image {cam.image_path} is {size[0]}x{size[1]} pixels but its camera is "
                f"calibrated for {expected[0]}x{expected[1]}: use the images the calibration "
                "was made with")


# --- turntables ------------------------------------------------------------------------


@dataclass
class TurntableSpec:
    """A turntable rig. ``count`` views per ring, or as many as ``step_deg`` fits in a
    turn (a count and a step together: an arc); one ring per elevation (degrees)."""

    count: int | None = 24
    step_deg: float | None = None
    start_deg: float = 0.0
    elevations_deg: list[float] = field(default_factory=lambda: [20.0])
    distance: float = 5.0
    lens: float = 50.0
    centre: tuple = (0.0, 0.0, 0.0)
    axis: tuple = (0.0, 0.0, 1.0)
    clockwise: bool = False
    image_folder: str = ""
    name: str = "Turntable"


def parse_angles(text: str) -> list[float]:
    """Angles in degrees from text like "20" or "-10, 20, 45"."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        angles = [float(p) for p in parts]
    except ValueError as exc:
        raise CameraImportError(f"the elevations {text!r} must be numbers in degrees separated "
                                "by commas, like 20, 45") from exc
    if not angles:
        raise CameraImportError("give at least one elevation in degrees, like 20")
    if any(abs(a) >= 90 for a in angles):
        raise CameraImportError(f"the elevations {text!r} must lie strictly between -90 and 90 "
                                "degrees (a camera on the axis has no defined turn)")
    return angles


def folder_images(folder: str) -> list[Path]:
    """The image files of a folder, sorted by name with numbers by value (r5 before r10)."""
    base = Path(bpy.path.abspath(folder))
    if not base.is_dir():
        raise CameraImportError(f"the image folder {base} does not exist")
    files = sorted((p for p in base.iterdir()
                    if p.is_file() and p.suffix.lower() in camera_files.IMAGE_SUFFIXES),
                   key=lambda p: camera_files.natural_key(p.name))
    if not files:
        raise CameraImportError(f"the folder {base} holds no images "
                                f"({', '.join(camera_files.IMAGE_SUFFIXES)})")
    return files


def turntable_cameras(scene, spec: TurntableSpec) -> list[ImportedCamera]:
    """The turntable's cameras (not yet in the scene): geometry from
    `camera.orbit_cameras`, the folder's images in sorted order, one per view (ring
    after ring), the render size of the images or else the scene's."""
    try:
        count = camera_model.turntable_count(spec.count, spec.step_deg)
        worlds = camera_model.orbit_cameras(
            count, spec.elevations_deg, spec.distance, target=spec.centre,
            azimuth_offset_deg=spec.start_deg, step_deg=spec.step_deg, axis=spec.axis,
            clockwise=spec.clockwise)
    except ValueError as exc:
        raise CameraImportError(str(exc)) from exc
    if not (spec.lens >= 1.0):
        raise CameraImportError(f"the focal length {spec.lens} mm must be at least 1 mm")
    paths = folder_images(spec.image_folder) if spec.image_folder else [None] * len(worlds)
    if len(paths) != len(worlds):
        raise CameraImportError(
            f"the folder {bpy.path.abspath(spec.image_folder)} holds {len(paths)} images but "
            f"the turntable has {len(worlds)} views ({count} per ring x "
            f"{len(spec.elevations_deg)} elevations): change the views or the folder")
    render = scene.render
    size = (render.resolution_x, render.resolution_y, render.resolution_percentage)
    if paths[0] is not None:
        size = (*_image_file_size(paths[0]), 100)
    cameras = []
    for i, (world, path) in enumerate(zip(worlds, paths, strict=True)):
        settings = {
            "matrix_world": world.tolist(), "resolution_x": int(size[0]),
            "resolution_y": int(size[1]), "resolution_percentage": int(size[2]),
            "lens": float(spec.lens), "sensor_width": camera_model.SENSOR_WIDTH,
            "sensor_height": camera_model.SENSOR_HEIGHT, "sensor_fit": "AUTO",
            "shift_x": 0.0, "shift_y": 0.0, "camera_type": "PERSP", "ortho_scale": 6.0,
            "pixel_aspect_x": 1.0 if path else render.pixel_aspect_x,
            "pixel_aspect_y": 1.0 if path else render.pixel_aspect_y,
        }
        name = path.stem if path is not None else f"{spec.name}.{i:03d}"
        cameras.append(ImportedCamera(name, settings, path))
    return cameras


def _image_file_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, loaded into Blender only for its size and
    removed again (unless it was loaded already)."""
    before = set(bpy.data.images)
    image = _load_image(path)
    try:
        return _image_size(image, path)
    finally:
        if image not in before:
            bpy.data.images.remove(image)


def add_turntable(scene, spec: TurntableSpec) -> bpy.types.Collection:
    """A turntable rig in a new collection; raises CameraImportError and changes
    nothing when the options or the image folder do not fit together."""
    return add_cameras(scene, turntable_cameras(scene, spec), spec.name)


# --- out of the scene ----------------------------------------------------------------


EXPORT_FORMATS = ("TRANSFORMS", "COLMAP")


def camera_records(scene, cameras, base_folder: Path | None) -> list[camera_files.CameraRecord]:
    """The cameras as file records: each image named by its background image's file
    (relative to ``base_folder``, or its file name alone when None), else by the
    camera's name + .png."""
    records = []
    for obj in sorted(cameras, key=lambda o: o.name):
        try:
            cam = scene_export.camera_matrices(scene, obj)
        except scene_export.ExportError as exc:
            raise CameraImportError(str(exc)) from exc
        slot = scene_export.background_image(obj)
        path = bpy.path.abspath(slot.image.filepath) if slot and slot.image.filepath else ""
        if not path:
            image = f"{obj.name}.png"
        elif base_folder is None:
            image = Path(path).name
        else:
            image = _relative_or_absolute(path, base_folder)
        mask = obj.get(MASK_PROPERTY)
        records.append(camera_files.CameraRecord(obj.name, image, cam,
                                                 str(mask) if mask else None))
    return records


def _relative_or_absolute(path: str, base_folder: Path) -> str:
    """``path`` relative to ``base_folder`` (a transforms.json's folder), or absolute when
    no relative path exists (another drive on Windows)."""
    try:
        return Path(os.path.relpath(path, base_folder)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def export_cameras(scene, path, file_format: str, selected_only: bool = False) -> int:
    """Write the scene's cameras as a transforms.json (``path``) or as a COLMAP text
    model (into the folder ``path``); returns the number of cameras written."""
    if file_format not in EXPORT_FORMATS:
        raise CameraImportError(f"format must be one of {EXPORT_FORMATS}, got {file_format!r}")
    cameras = [o for o in scene.objects if o.type == "CAMERA"
               and (o.select_get() or not selected_only)]
    if not cameras:
        which = "selected cameras" if selected_only else "cameras"
        raise CameraImportError(f"the scene has no {which} to export")
    path = Path(bpy.path.abspath(str(path)))
    base = path.parent if file_format == "TRANSFORMS" else None
    records = camera_records(scene, cameras, base)
    try:
        if file_format == "TRANSFORMS":
            camera_files.write_transforms(path, records)
        else:
            camera_files.write_colmap_text(path, records)
    except (ValueError, OSError) as exc:
        raise CameraImportError(f"cannot write {path}: {exc}") from exc
    return len(records)


__all__ = ["CameraFileError", "CameraImportError", "TurntableSpec", "add_turntable",
           "export_cameras", "import_cameras"]
