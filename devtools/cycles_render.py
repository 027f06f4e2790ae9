"""Reference renders with Blender's Cycles (bpy as a module), for tests, benchmarks and demos.

    from devtools import cycles
    scene = cycles.reset_scene()
    obj = cycles.load_obj(cycles.spot_path())          # or cycles.add_mesh(vertices, faces)
    cam = cycles.add_camera(scene, params)             # blender_camera keyword arguments
    cycles.configure_cycles(scene, samples=1)
    rgba = cycles.render_rgba(scene, cam)              # (H, W, 4) float32, row 0 at the top
    same = cycles.camera_params(cam, scene)            # plain dict -> blender_camera(**same)

Camera parameters travel as the plain dict that `backend.core.camera.blender_camera`
accepts (its keyword names, plain numbers, ``matrix_world`` as nested lists), so a
scene built here and the soft rasterizer see the same camera through the one
conversion in `backend.core.camera`.

bpy keeps one global state: every function works on the scene it is given, and
`reset_scene` empties everything. Importing this module imports bpy (~1 s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import bpy
import mathutils
import numpy as np

from backend.core.mesh_arrays import triangle_arrays
from softras_blender.scene_export import camera_params  # noqa: F401 (re-exported)
from softras_blender.silhouettes import linear_to_srgb, srgb_to_linear  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parent.parent

# The keyword arguments of backend.core.camera.blender_camera, in its order.
CAMERA_KEYS = (
    "matrix_world",
    "resolution_x",
    "resolution_y",
    "resolution_percentage",
    "lens",
    "sensor_width",
    "sensor_height",
    "sensor_fit",
    "shift_x",
    "shift_y",
    "pixel_aspect_x",
    "pixel_aspect_y",
    "camera_type",
    "ortho_scale",
)


def spot_path(repo_root: str | Path = REPO_ROOT) -> Path:
    """The Spot cow OBJ in the shared data folder beside the repository."""
    path = Path(repo_root).parent / "shared" / "data" / "meshes" / "spot" / "spot_triangulated.obj"
    if not path.is_file():
        raise FileNotFoundError(
            f"the Spot mesh is missing at {path}: the 'shared' data folder must sit beside the "
            "repository"
        )
    return path


def reset_scene() -> bpy.types.Scene:
    """Start from Blender's factory settings with an empty scene; returns that scene."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def add_mesh(vertices, faces, name: str = "mesh", scene=None) -> bpy.types.Object:
    """A mesh object from arrays, linked into the scene at the world origin.

    vertices: (V, 3) float world coordinates; faces: (F, 3) integer vertex indices.
    """
    vertices, faces = triangle_arrays(vertices, faces)
    vertices = vertices.astype(np.float32)
    scene = scene or bpy.context.scene
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, dtype=np.int32))
    mesh.update()
    if mesh.validate():  # True when it had to correct something
        raise ValueError("Blender found invalid geometry in the mesh (degenerate or duplicate "
                         "faces, see its console messages): clean the arrays first")
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def load_obj(path: str | Path, scene=None) -> bpy.types.Object:
    """Import a Wavefront OBJ with Blender's importer (Y up in the file, Z up in Blender).

    Returns the imported object (with its materials and UVs); the importer's axis
    conversion stays in the object's ``matrix_world``, which `mesh_arrays` applies.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no OBJ file at {path}")
    scene = scene or bpy.context.scene
    before = set(scene.objects)
    bpy.ops.wm.obj_import(filepath=str(path))
    new = [o for o in scene.objects if o not in before and o.type == "MESH"]
    if len(new) != 1:
        raise ValueError(f"expected one mesh object in {path}, the importer made {len(new)}")
    return new[0]


def mesh_arrays(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """World-space vertices (V, 3) float64 and triangles (F, 3) int64 of a mesh object.

    Raises ValueError for polygons that are not triangles (triangulate first).
    """
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    world = np.array(obj.matrix_world, dtype=np.float64)
    vertices = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
    totals = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_total", totals)
    if np.any(totals != 3):
        raise ValueError(f"{obj.name!r} has {int(np.sum(totals != 3))} polygons that are not "
                         "triangles: triangulate it first")
    faces = np.empty(len(mesh.polygons) * 3, dtype=np.int32)
    mesh.polygons.foreach_get("vertices", faces)
    return vertices, faces.reshape(-1, 3).astype(np.int64)


def vertex_colors_from_texture(obj: bpy.types.Object) -> np.ndarray:
    """Per-vertex linear RGB (V, 3) float32 sampled from the object's image texture.

    Uses the first Image Texture node of the first material and the active UV map;
    each corner samples the texture bilinearly and a vertex averages its corners.
    8-bit sRGB textures are decoded to linear light, as Cycles shades them.
    """
    mesh = obj.data
    material = mesh.materials[0] if mesh.materials else None
    nodes = material.node_tree.nodes if material and material.node_tree else []
    images = [n.image for n in nodes if n.type == "TEX_IMAGE" and n.image is not None]
    if not images:
        raise ValueError(f"{obj.name!r} has no image texture in its first material")
    if mesh.uv_layers.active is None:
        raise ValueError(f"{obj.name!r} has no UV map")
    image = images[0]
    width, height = image.size
    texels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(texels)
    texels = texels.reshape(height, width, 4)[..., :3]  # row 0 at the bottom, like v = 0
    if not image.is_float and image.colorspace_settings.name == "sRGB":
        texels = srgb_to_linear(texels)

    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    mesh.uv_layers.active.data.foreach_get("uv", uv)
    uv = uv.reshape(-1, 2)
    corner_vertex = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", corner_vertex)
    corner_rgb = _bilinear(texels, uv[:, 0] * width - 0.5, uv[:, 1] * height - 0.5)
    count = np.bincount(corner_vertex, minlength=len(mesh.vertices))
    rgb = np.stack(
        [np.bincount(corner_vertex, corner_rgb[:, c], minlength=len(mesh.vertices))
         for c in range(3)], axis=1)
    return (rgb / np.maximum(count, 1)[:, None]).astype(np.float32)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at continuous pixel coordinates (texel centres at integers), wrapping."""
    height, width = image.shape[:2]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % width, (y0 + 1) % height
    x0, y0 = x0 % width, y0 % height
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def add_camera(scene, params: dict, name: str = "camera") -> bpy.types.Object:
    """A camera object set from ``params`` (see `apply_camera_params`), made the scene's camera."""
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    scene.collection.objects.link(cam)
    apply_camera_params(cam, scene, params)
    scene.camera = cam
    return cam


def apply_camera_params(cam_obj, scene, params: dict) -> None:
    """Set a camera object and the scene's render size from a `blender_camera` dict.

    Missing keys keep Blender's current values; unknown keys raise ValueError. The
    resolution and pixel aspect belong to the scene, so every camera of a scene
    shares them.
    """
    unknown = set(params) - set(CAMERA_KEYS)
    if unknown:
        raise ValueError(f"unknown camera parameters {sorted(unknown)}; known: {CAMERA_KEYS}")
    data, render = cam_obj.data, scene.render
    if "matrix_world" in params:
        cam_obj.matrix_world = _matrix(params["matrix_world"])
    targets = {
        "resolution_x": render, "resolution_y": render, "resolution_percentage": render,
        "pixel_aspect_x": render, "pixel_aspect_y": render,
        "lens": data, "sensor_width": data, "sensor_height": data, "sensor_fit": data,
        "shift_x": data, "shift_y": data, "ortho_scale": data,
    }
    for key, target in targets.items():
        if key in params:
            setattr(target, key, params[key])
    if "camera_type" in params:
        data.type = params["camera_type"]


def _matrix(rows) -> mathutils.Matrix:
    """A 4x4 mathutils.Matrix from row-major numbers (a plain nested list would be read
    column by column when assigned to ``matrix_world``)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape != (4, 4) or not np.all(np.isfinite(rows)):
        raise ValueError(f"matrix_world must be a finite 4x4 matrix, got shape {rows.shape}")
    return mathutils.Matrix(rows.tolist())


def configure_cycles(
    scene,
    samples: int = 1,
    filter_width: float = 0.01,
    max_bounces: int = 2,
    view_transform: str = "Standard",
) -> None:
    """Cycles on the CPU with a transparent film and a crisp, deterministic alpha.

    With ``filter_width`` near zero every sample sits at the pixel centre, so alpha
    is the point coverage of each pixel centre, the same rule the rasterizer uses.
    No denoising and no adaptive sampling, so alpha is exactly 0 or 1 away from
    semi-transparent materials.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not filter_width > 0:
        raise ValueError(f"filter_width must be positive (Blender's minimum is 0.01), got "
                         f"{filter_width}")
    scene.render.engine = "CYCLES"
    cyc = scene.cycles
    cyc.device = "CPU"
    cyc.samples = samples
    cyc.use_adaptive_sampling = False
    cyc.use_denoising = False
    cyc.filter_width = filter_width
    cyc.seed = 0
    cyc.max_bounces = max_bounces
    scene.render.film_transparent = True
    scene.view_settings.view_transform = view_transform


def add_sun(scene, direction, strength: float = 1.0, name: str = "sun") -> bpy.types.Object:
    """A sun lamp shining from ``direction`` (world vector pointing towards the light)."""
    from backend.core.camera import look_at

    direction = np.asarray(direction, dtype=np.float64)
    lamp = bpy.data.lights.new(name, "SUN")
    lamp.energy = strength
    lamp.angle = 0.0
    obj = bpy.data.objects.new(name, lamp)
    # A sun shines along its local -Z, which look_at points from `direction` to the origin.
    obj.matrix_world = _matrix(look_at(direction, (0.0, 0.0, 0.0)))
    scene.collection.objects.link(obj)
    return obj


def set_world_color(scene, color=(0.0, 0.0, 0.0), strength: float = 1.0) -> None:
    """A uniform environment light of the given linear RGB colour and strength."""
    world = scene.world or bpy.data.worlds.new("world")
    scene.world = world
    world.use_nodes = True
    background = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (*color, 1.0)
    background.inputs["Strength"].default_value = strength


def render_rgba(scene, camera=None) -> np.ndarray:
    """Render the scene with its current engine; (H, W, 4) float32 RGBA, row 0 at the top.

    camera: the camera object to render through (default: ``scene.camera``).
    Colours are linear light as Cycles writes them to OpenEXR (no view transform);
    alpha is the film's coverage. The image is written to a temporary EXR and read
    back, because Blender's 'Render Result' has no readable pixels; this sets the
    scene's output format and path.
    """
    if camera is not None:
        scene.camera = camera
    if scene.camera is None:
        raise ValueError("the scene has no camera: pass one or set scene.camera")
    settings = scene.render.image_settings
    settings.file_format = "OPEN_EXR"
    settings.color_mode = "RGBA"
    settings.color_depth = "32"
    with tempfile.TemporaryDirectory(prefix="softras_cycles_") as tmp:
        path = Path(tmp) / "render.exr"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True, scene=scene.name)
        if not path.is_file():
            raise RuntimeError(f"Blender did not write the render to {path}")
        image = bpy.data.images.load(str(path))
        try:
            width, height = image.size
            pixels = np.empty(width * height * 4, dtype=np.float32)
            image.pixels.foreach_get(pixels)
        finally:
            bpy.data.images.remove(image)
    return np.ascontiguousarray(pixels.reshape(height, width, 4)[::-1])

