"""Blender data -> the plain data the backend fits: mesh arrays, cameras, target images.

`export_request` reads the scene's fit settings and checks them, and returns a
`FitRequest` that a `session.FitSession` runs. Only reads Blender data; everything
computed from it lives in bpy-free modules (`silhouettes`, `fit_options`,
`backend.core.camera`). All positions are in world space.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import bpy
import numpy as np

from . import fit_options, model_download, runtime, silhouettes
from .backend.core import camera as camera_model
from .backend.core import mask_files, messages
from .backend.core.messages import View

IMAGE_EXTENSIONS = (".png", ".exr", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".bmp", ".tga")
# Byte images in these colour spaces hold linear values already.
LINEAR_BYTE_SPACES = ("Non-Color", "Linear Rec.709", "Linear", "Raw")
# Custom property of a camera: its mask file (set by camera_import from a transforms.json).
MASK_PROPERTY = "softras_mask"


class ExportError(ValueError):
    """The scene cannot be fitted as it is; the message says what to change."""


@dataclass(frozen=True)
class FitRequest:
    """Everything one fit needs, as plain data read from the scene.

    vertices: (V, 3) float32 world-space start mesh and faces (F, 3) int32, or both None
    to start from the silhouettes; views: the cameras and their target images;
    options: `FitOptions` fields; source_name: the mesh object fitted (None: the fit
    makes a new object named after ``start_name``, "Visual Hull" or "Sphere");
    scene_name: the scene it belongs to; silhouettes: how the backend finds the
    silhouettes (`messages.silhouettes_settings`), None for the images' alpha as it is.
    """

    vertices: np.ndarray | None
    faces: np.ndarray | None
    views: list[View]
    options: dict
    source_name: str | None
    scene_name: str
    start_name: str
    silhouettes: dict | None = None


# The panel's starts without a mesh -> the name of the object the fit makes.
START_NAMES = {"HULL": "Visual Hull", "SPHERE": "Sphere"}


def settings_dict(settings) -> dict:
    """The scene's fit settings (``scene.softras``) as plain values."""
    return {
        "iterations": settings.iterations,
        "sharpness": settings.sharpness,
        "fit_colors": settings.fit_colors,
        "smoothness": settings.smoothness,
        "start": settings.mesh_source,
        "align_mesh": settings.align_mesh,
        "keep_topology": settings.keep_topology,
        "refine_cameras": settings.refine_cameras,
    }


def export_request(context, device: str) -> FitRequest:
    """The fit the scene's settings (``scene.softras``) describe, on ``device`` ("AUTO",
    "CPU", "CUDA"). Raises ExportError saying what to change when the scene cannot be
    fitted as it is."""
    scene = context.scene
    settings = scene.softras
    source = fit_source(context)
    vertices, faces = mesh_arrays(source) if source is not None else (None, None)
    cameras = scene_cameras(scene, settings.camera_source, settings.camera_collection,
                            settings.image_source, settings.image_folder)
    views = export_views(scene, cameras, settings.image_source, settings.image_folder,
                         settings.held_out_every, settings.resolution,
                         settings.silhouettes, settings.mask_folder)
    try:
        options = fit_options.options_from_settings(settings_dict(settings), device)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    return FitRequest(vertices, faces, views, options, source.name if source else None,
                      scene.name, START_NAMES.get(settings.mesh_source, ""),
                      silhouette_request(settings))


def silhouette_request(settings, contact_sheet: str | None = None) -> dict | None:
    """The fit's silhouettes field (`messages.silhouettes_settings`) from the scene's
    settings; None for mode ALPHA (the images' alpha as it is, checked here)."""
    if settings.silhouettes == "ALPHA":
        return None
    model = salient_model(settings) if settings.silhouettes == "LEARNED" else None
    return messages.silhouettes_settings(settings.silhouettes.lower(), model,
                                         settings.check_views, settings.keep_flagged,
                                         contact_sheet)


def salient_model(settings) -> str:
    """The salient-object model for silhouettes "Learned": the file named in the panel,
    else the one "Install Backend" downloaded into the add-on's user folder. ExportError
    saying how to get one when there is neither."""
    if settings.model_path:
        return bpy.path.abspath(settings.model_path)
    installed = model_download.installed_model(runtime.user_dir())
    if installed is None:
        raise ExportError(
            "silhouettes 'Learned' needs a salient-object model (U2-Net class, ONNX) and none "
            f"is installed ({model_download.model_path(runtime.user_dir())}): press Install "
            "Backend in the add-on's preferences with online access allowed (it downloads "
            f"{model_download.MODEL_FILE}), or name a model file (the panel's Model; "
            "--model headless)")
    return str(installed)


def with_contact_sheet(request: FitRequest, path: str) -> FitRequest:
    """The request, asking the backend to write a contact sheet (photo | mask | fitted
    outline per camera) to ``path`` after the fit; mode ALPHA then runs the silhouettes
    stage on the images' alpha."""
    fields = request.silhouettes or messages.silhouettes_settings("alpha")
    return replace(request, silhouettes={**fields, "contact_sheet": str(path)})


def fit_source(context):
    """The mesh object the settings choose to fit, or None to start from the silhouettes;
    ExportError when the choice is not a mesh in Object Mode."""
    settings = context.scene.softras
    if settings.mesh_source in fit_options.START_SHAPES:
        return None
    if settings.mesh_source == "OBJECT":
        source = settings.target_object
        if source is None:
            raise ExportError("no object chosen to fit: pick a mesh object, or start from "
                              "the visual hull")
    else:
        source = context.active_object
        if source is None:
            raise ExportError("there is no active object: select the mesh to fit, or start "
                              "from the visual hull")
    if source.type != "MESH":
        raise ExportError(f"{source.name!r} is a {source.type.lower()} object, not a mesh: "
                          "select a mesh to fit, or start from the visual hull")
    if source.mode != "OBJECT":
        raise ExportError(f"{source.name!r} is in {source.mode.title()} Mode: switch to "
                          "Object Mode to fit it")
    return source


def mesh_arrays(obj) -> tuple[np.ndarray, np.ndarray]:
    """World-space vertices (V, 3) float32 and triangles (F, 3) int32 of a mesh object.

    Reads the mesh data itself (modifiers are not applied, so the fitted positions
    map one to one onto the object's vertices); polygons are split into Blender's
    own loop triangles.
    """
    if obj is None or obj.type != "MESH":
        kind = "nothing" if obj is None else f"a {obj.type.lower()} object"
        name = "" if obj is None else f" ({obj.name!r})"
        raise ExportError(f"the object to fit{name} is {kind}, not a mesh: pick a mesh object, "
                          "or choose 'Visual Hull' to start from the silhouettes")
    mesh = obj.data
    if len(mesh.vertices) < 4 or len(mesh.polygons) == 0:
        raise ExportError(f"the mesh of {obj.name!r} has {len(mesh.vertices)} vertices and "
                          f"{len(mesh.polygons)} faces: it needs a closed surface to fit")
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    world = np.array(obj.matrix_world, dtype=np.float64)
    vertices = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
    mesh.calc_loop_triangles()
    faces = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
    mesh.loop_triangles.foreach_get("vertices", faces)
    return vertices.astype(np.float32), faces.reshape(-1, 3)


def camera_params(cam_obj, scene) -> dict:
    """A camera object's and the scene's render settings as plain numbers: exactly the
    keyword arguments of `backend.core.camera.blender_camera`."""
    render, data = scene.render, cam_obj.data
    if render.use_border and render.use_crop_to_border:
        raise ExportError("the scene renders a cropped region: turn off 'Crop to Render Region' "
                          "so the reference images show the full camera frame")
    return {
        "matrix_world": [list(map(float, row)) for row in cam_obj.matrix_world],
        "resolution_x": int(render.resolution_x),
        "resolution_y": int(render.resolution_y),
        "resolution_percentage": int(render.resolution_percentage),
        "lens": float(data.lens),
        "sensor_width": float(data.sensor_width),
        "sensor_height": float(data.sensor_height),
        "sensor_fit": str(data.sensor_fit),
        "shift_x": float(data.shift_x),
        "shift_y": float(data.shift_y),
        "pixel_aspect_x": float(render.pixel_aspect_x),
        "pixel_aspect_y": float(render.pixel_aspect_y),
        "camera_type": str(data.type),
        "ortho_scale": float(data.ortho_scale),
    }


def camera_matrices(scene, cam_obj) -> camera_model.CameraMatrices:
    """The rasterizer's camera for a camera object and the scene's render settings."""
    params = camera_params(cam_obj, scene)
    try:
        return camera_model.blender_camera(**params)
    except ValueError as exc:
        raise ExportError(f"camera {cam_obj.name!r}: {exc}") from exc


def background_image(cam_obj):
    """The camera's first shown background image slot that holds an image, or None."""
    for slot in cam_obj.data.background_images:
        if slot.source == "IMAGE" and slot.image is not None and slot.show_background_image:
            return slot
    return None


def folder_image_path(folder: str, name: str) -> Path | None:
    """``folder/<name>.<ext>`` for the first known image extension that exists."""
    base = Path(bpy.path.abspath(folder))
    for ext in IMAGE_EXTENSIONS:
        for candidate in (base / (name + ext), base / (name + ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def scene_cameras(scene, source: str, collection=None, image_source: str = "BACKGROUND",
                  folder: str = "") -> list:
    """The cameras to fit, sorted by name.

    source "ALL": every camera in the scene that has a reference image (a background
    image, or a file in ``folder`` named after it); "COLLECTION": every camera in
    ``collection`` (and its children), each of which must have an image.
    """
    if source == "COLLECTION":
        if collection is None:
            raise ExportError("no camera collection chosen: pick one, or use all cameras")
        cameras = [o for o in collection.all_objects if o.type == "CAMERA"]
        if not cameras:
            raise ExportError(f"the collection {collection.name!r} holds no cameras")
        return sorted(cameras, key=lambda o: o.name)
    cameras = [o for o in scene.objects if o.type == "CAMERA"]
    if image_source == "FOLDER":
        chosen = [o for o in cameras if folder_image_path(folder, o.name) is not None]
        where = f"an image named after it in {bpy.path.abspath(folder) or '(no folder set)'}"
    else:
        chosen = [o for o in cameras if background_image(o) is not None]
        where = "a background image"
    if not chosen:
        raise ExportError(f"none of the scene's {len(cameras)} cameras has {where}: add "
                          "reference images to the cameras first")
    return sorted(chosen, key=lambda o: o.name)


def image_pixels(image) -> np.ndarray:
    """A Blender image's pixels as (h, w, 4) float32, row 0 at the BOTTOM, as stored."""
    if not image.has_data:
        image.reload()
    width, height = image.size
    if width == 0 or height == 0:
        path = bpy.path.abspath(image.filepath) if image.filepath else "(packed or generated)"
        raise ExportError(f"image {image.name!r} has no pixels: its file {path} is missing or "
                          "unreadable")
    pixels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(height, width, 4)


def _decoding(image) -> dict:
    """How to read ``image.pixels``: float buffers are linear and premultiplied,
    byte buffers keep the file's encoding with straight alpha."""
    if image.is_float:
        return {"srgb": False, "premultiplied": True}
    space = image.colorspace_settings.name
    if space == "sRGB":
        return {"srgb": True, "premultiplied": False}
    if space in LINEAR_BYTE_SPACES:
        return {"srgb": False, "premultiplied": False}
    raise ExportError(f"image {image.name!r} uses the colour space {space!r}: set it to sRGB "
                      "or Non-Color in the Image Editor's sidebar")


def view_for_camera(scene, cam_obj, image_source: str, folder: str = "",
                    held_out: bool = False, resolution: int = 0, mode: str = "ALPHA",
                    mask_folder: str = "") -> View:
    """Camera matrices and the target image of one camera, at the fit's resolution
    (longest side at most ``resolution`` pixels; 0: the render's size).

    image_source "BACKGROUND": the camera's background image, placed in the frame as
    the viewport draws it (frame method, offset, scale, rotation, flips);
    "FOLDER": ``folder/<camera name>.<ext>``, which must have the render's aspect.
    mode: the silhouettes setting; only "ALPHA" requires the image's alpha to be a
    silhouette here (the others are found by the backend). The view carries the
    camera's mask (`camera_mask`) when the mode uses one.
    """
    cam = camera_matrices(scene, cam_obj)
    render = scene.render
    framing = {
        "pixel_aspect": (render.pixel_aspect_x, render.pixel_aspect_y),
        "sensor_fit": cam_obj.data.sensor_fit,
    }
    if image_source == "FOLDER":
        path = folder_image_path(folder, cam_obj.name)
        if path is None:
            raise ExportError(f"camera {cam_obj.name!r} has no image in "
                              f"{bpy.path.abspath(folder) or '(no folder set)'}: expected a "
                              f"file named {cam_obj.name}.png (or .exr, .jpg, ...)")
        image = bpy.data.images.load(str(path), check_existing=True)
        label = f"the image {path.name} of camera {cam_obj.name!r}"
    else:
        slot = background_image(cam_obj)
        if slot is None:
            raise ExportError(f"camera {cam_obj.name!r} has no background image: add one in its "
                              "camera properties, or leave it out of the camera collection")
        image = slot.image
        label = f"the background image {image.name!r} of camera {cam_obj.name!r}"
        framing.update(frame_method=slot.frame_method, offset=tuple(slot.offset),
                       scale=slot.scale, rotation=slot.rotation, flip_x=slot.use_flip_x,
                       flip_y=slot.use_flip_y)
    framing["image_pixel_aspect"] = tuple(image.display_aspect)
    size = fit_options.fit_size(cam.width, cam.height, resolution)
    try:
        target = silhouettes.target_from_pixels(
            image_pixels(image), (cam.width, cam.height), name=label, sample_size=size,
            **_decoding(image), **framing)
        if mode == "ALPHA":
            silhouettes.check_silhouette(target, label)
        mask = camera_mask(cam_obj, image, mode, mask_folder, (cam.width, cam.height),
                           size, framing)
    except ExportError:
        raise
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    return View(cam.resized(*size), target, cam_obj.name, held_out, mask)


def mask_path(cam_obj, image, mode: str, mask_folder: str = "") -> Path | None:
    """The camera's mask file: the one its camera file named (``softras_mask``), else the
    one matching its image's name in ``mask_folder`` (`mask_files.find_mask`). None when
    the mode uses no mask (ALPHA, KEY, LEARNED, or AUTO with neither); ExportError when
    mode MASKS finds none."""
    if mode not in ("MASKS", "AUTO"):
        return None
    named = cam_obj.get(MASK_PROPERTY)
    if named:
        path = Path(bpy.path.abspath(str(named)))
        if not path.is_file():
            raise ExportError(f"camera {cam_obj.name!r}: its mask file {path} is missing")
        return path
    if mask_folder:
        image_name = Path(image.filepath).name or image.name
        return mask_files.find_mask(image_name, Path(bpy.path.abspath(mask_folder)))
    if mode == "MASKS":
        raise ExportError(f"camera {cam_obj.name!r} has no mask: choose a masks folder (masks "
                          "named after the images, white = object)")
    return None


def camera_mask(cam_obj, image, mode: str, mask_folder: str, render_size, size,
                framing: dict) -> np.ndarray | None:
    """The camera's mask (`mask_path`) placed in the camera frame like its image, at the
    fit's ``size``: (H, W) float32 in [0, 1], or None. ExportError when the mask's size
    differs from the image's."""
    path = mask_path(cam_obj, image, mode, mask_folder)
    if path is None:
        return None
    before = set(bpy.data.images)
    mask_image = bpy.data.images.load(str(path), check_existing=True)
    try:
        if tuple(mask_image.size) != tuple(image.size):
            raise ExportError(
                f"camera {cam_obj.name!r}: its mask {path.name} is {mask_image.size[0]}x"
                f"{mask_image.size[1]} but its image is {image.size[0]}x{image.size[1]}; "
                "masks must have their images' size")
        if not mask_image.is_float:
            mask_image.colorspace_settings.name = "Non-Color"
        rgba = silhouettes.target_from_pixels(
            image_pixels(mask_image), render_size, srgb=False,
            premultiplied=mask_image.is_float, name=path.name, sample_size=size, **framing)
    finally:
        if mask_image not in before:
            bpy.data.images.remove(mask_image)
    return silhouettes.mask_from_rgba(rgba)


def export_views(scene, cameras, image_source: str, folder: str = "",
                 held_out_every: int = 0, resolution: int = 0, mode: str = "ALPHA",
                 mask_folder: str = "") -> list[View]:
    """Views for the cameras; with ``held_out_every`` k > 1, every k-th camera (the
    2nd of each k) is held out: measured, never fitted. mode, mask_folder: see
    `view_for_camera`."""
    views = []
    for i, cam_obj in enumerate(cameras):
        held = held_out_every > 1 and i % held_out_every == 1
        views.append(view_for_camera(scene, cam_obj, image_source, folder, held, resolution,
                                     mode, mask_folder))
    if all(v.held_out for v in views):
        raise ExportError("every camera is held out: lower the held-out setting")
    return views
