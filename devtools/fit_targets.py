"""Fit targets and starting meshes as a new user would have them, for benchmarks and tests.

    from devtools import fit_targets as ft
    scene, obj = ft.build_target("table")                  # a fresh scene holding the target
    true_v, true_f = cycles.mesh_arrays(obj)
    rig = ft.camera_rig(true_v, 128, 128)                  # fitting and held-out cameras
    images = ft.render_views(scene, rig.fitting)           # Cycles RGBA, alpha = silhouette
    start = ft.start_mesh("cube")                          # Blender's default cube, 12 triangles

Targets (`TARGETS`), each built deterministically from Blender primitives or the
shared data: Suzanne subdivided twice, the Spot cow, a torus standing upright (a
through-hole the silhouettes show) and a table with thin legs standing on the floor.
Starts (`STARTS`): Blender's default cube, UV sphere and icosphere as the Add menu
makes them (at the origin, not aligned to the target), or the fitter's own starts
from the silhouettes ("hull", "sphere": `start_mesh` returns None for those and
`FitOptions.init` picks them).

`shaded_render` draws a mesh in matte grey under a sun and an ambient world, which
shows the surface (spikes, slivers, dents) that silhouettes hide. Needs bpy.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass

# isort: off
import bpy  # first: bmesh and mathutils exist once bpy is loaded
import bmesh
# isort: on
import mathutils
import numpy as np

from backend.core.camera import orbit_cameras
from devtools import cycles_render as cycles

TARGETS = ("suzanne", "spot", "torus", "table")
STARTS = ("cube", "uv_sphere", "icosphere", "hull", "sphere")
FIT_ELEVATIONS = (-15.0, 15.0, 45.0)
FIT_AZIMUTHS = 8
# Held-out cameras: elevations and azimuths that no fitting view uses.
HELD_OUT = ((0.0, 22.5), (30.0, 67.5), (60.0, 112.5), (-30.0, 157.5),
            (5.0, 202.5), (35.0, 247.5), (-5.0, 292.5), (25.0, 337.5))
CYCLES_SAMPLES = 16
CYCLES_FILTER = 1.5
# The shaded pictures' light: a sun from the upper left front plus a grey ambient world.
SUN_DIRECTION = (0.3, -1.0, 0.9)
SUN_STRENGTH = 3.0
AMBIENT = 0.25
MATTE_GREY = 0.6

# The table: a top slab on four cylindrical legs, standing on the floor (z = 0).
TABLE_TOP_SIZE = (1.6, 1.0, 0.08)
TABLE_HEIGHT = 1.0
TABLE_LEG_RADIUS = 0.05
TABLE_LEG_INSET = 0.1  # from the top's edges to the legs' axes
LEG_SEGMENTS = 16


@dataclass(frozen=True)
class CameraRig:
    """`blender_camera` keyword dicts of the fitting and the held-out cameras."""

    fitting: list[dict]
    held_out: list[dict]


def build_target(name: str):
    """A fresh scene (Cycles configured) holding the target ``name``; returns (scene, object).

    The object is triangulated; `cycles.mesh_arrays(obj)` gives its world-space arrays.
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}: use one of {TARGETS}")
    scene = cycles.reset_scene()
    if name == "spot":
        obj = cycles.load_obj(cycles.spot_path())
    else:
        builders = {"suzanne": _suzanne, "torus": _torus, "table": _table}
        obj = _object_from_bmesh(builders[name](), name, scene)
    cycles.configure_cycles(scene, samples=CYCLES_SAMPLES, filter_width=CYCLES_FILTER,
                            max_bounces=0)
    return scene, obj


def _suzanne() -> bmesh.types.BMesh:
    """Suzanne (Blender's monkey, size 2) with two levels of Catmull-Clark subdivision."""
    bm = bmesh.new()
    bmesh.ops.create_monkey(bm)
    mesh = bpy.data.meshes.new("suzanne_base")
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new("suzanne_base", mesh)
    bpy.context.scene.collection.objects.link(obj)
    subsurf = obj.modifiers.new("subdivision", "SUBSURF")
    subsurf.levels = subsurf.render_levels = 2
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    bm = bmesh.new()
    bm.from_mesh(evaluated.to_mesh())
    evaluated.to_mesh_clear()
    bpy.data.objects.remove(obj)
    bpy.data.meshes.remove(mesh)
    return bm


def _torus() -> bmesh.types.BMesh:
    """A torus (major radius 1, minor 0.3) standing upright in the XZ plane, centred at 0."""
    bm = bmesh.new()
    major, minor, rings, sides = 1.0, 0.3, 48, 16
    grid = []
    for i in range(rings):
        u = 2.0 * math.pi * i / rings
        row = []
        for j in range(sides):
            w = 2.0 * math.pi * j / sides
            r = major + minor * math.cos(w)
            row.append(bm.verts.new((r * math.cos(u), minor * math.sin(w), r * math.sin(u))))
        grid.append(row)
    for i in range(rings):
        for j in range(sides):
            a, b = grid[i][j], grid[(i + 1) % rings][j]
            c, d = grid[(i + 1) % rings][(j + 1) % sides], grid[i][(j + 1) % sides]
            bm.faces.new((a, b, c, d))
    bmesh.ops.recalc_face_normals(bm, faces=bm.faces)
    return bm


def _table() -> bmesh.types.BMesh:
    """A table standing on the floor: a slab top on four thin cylindrical legs.

    The legs end on the underside of the top, so the surface has no hidden parts.
    """
    bm = bmesh.new()
    sx, sy, sz = TABLE_TOP_SIZE
    top_centre = mathutils.Vector((0.0, 0.0, TABLE_HEIGHT - sz / 2))
    scale = mathutils.Matrix.Diagonal((sx, sy, sz, 1.0))
    bmesh.ops.create_cube(bm, size=1.0, matrix=mathutils.Matrix.Translation(top_centre) @ scale)
    leg_height = TABLE_HEIGHT - sz
    for x in (-1, 1):
        for y in (-1, 1):
            centre = mathutils.Vector((x * (sx / 2 - TABLE_LEG_INSET),
                                       y * (sy / 2 - TABLE_LEG_INSET), leg_height / 2))
            bmesh.ops.create_cone(bm, cap_ends=True, segments=LEG_SEGMENTS,
                                  radius1=TABLE_LEG_RADIUS, radius2=TABLE_LEG_RADIUS,
                                  depth=leg_height, matrix=mathutils.Matrix.Translation(centre))
    return bm


def _object_from_bmesh(bm: bmesh.types.BMesh, name: str, scene) -> bpy.types.Object:
    """Triangulate ``bm``, free it, and link a mesh object holding it into ``scene``."""
    bmesh.ops.triangulate(bm, faces=bm.faces[:], quad_method="FIXED", ngon_method="EAR_CLIP")
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def start_mesh(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The starting mesh ``name`` as Blender's Add menu makes it, at the origin, triangulated.

    "cube": the default cube (size 2, 12 triangles); "uv_sphere": 32 segments x 16
    rings, radius 1 (960 triangles); "icosphere": 3 subdivisions, radius 1 (320
    triangles; the Add menu's default, 2, gives 80). Returns vertices (V, 3) float64
    and faces (F, 3) int64, or None for "hull" and "sphere", which the fitter builds
    from the silhouettes.
    """
    if name not in STARTS:
        raise ValueError(f"unknown start {name!r}: use one of {STARTS}")
    if name in ("hull", "sphere"):
        return None
    bm = bmesh.new()
    if name == "cube":
        bmesh.ops.create_cube(bm, size=2.0)
    elif name == "uv_sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=1.0)
    else:
        bmesh.ops.create_icosphere(bm, subdivisions=3, radius=1.0)
    bmesh.ops.triangulate(bm, faces=bm.faces[:], quad_method="FIXED")
    bm.verts.index_update()
    vertices = np.array([v.co[:] for v in bm.verts], dtype=np.float64)
    faces = np.array([[v.index for v in f.verts] for f in bm.faces], dtype=np.int64)
    bm.free()
    return vertices, faces


def camera_rig(vertices: np.ndarray, width: int, height: int,
               elevations=FIT_ELEVATIONS, azimuths: int = FIT_AZIMUTHS,
               held_out=HELD_OUT) -> CameraRig:
    """Cameras orbiting the bounding box centre of ``vertices`` (V, 3), a 50 mm lens.

    Fitting cameras: ``azimuths`` per elevation (degrees); held-out cameras: one per
    (elevation, azimuth) pair of ``held_out``. The distance keeps the bounding
    sphere inside the frame.
    """
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre, radius = 0.5 * (lo + hi), 0.5 * float(np.linalg.norm(hi - lo))
    distance = radius * 4.2 * max(1.0, width / height)
    common = {"resolution_x": width, "resolution_y": height, "lens": 50.0}
    fitting = [{"matrix_world": m.tolist(), **common}
               for m in orbit_cameras(azimuths, list(elevations), distance, target=centre)]
    held = [{"matrix_world": orbit_cameras(1, [el], distance, target=centre,
                                           azimuth_offset_deg=az)[0].tolist(), **common}
            for el, az in held_out]
    return CameraRig(fitting, held)


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


def render_views(scene, params: list[dict]) -> list[np.ndarray]:
    """Cycles renders of ``scene`` from each camera dict: (H, W, 4) float32 RGBA each."""
    cam = cycles.add_camera(scene, params[0], name="fit_targets_camera")
    images = []
    try:
        with quiet_stdout():
            for p in params:
                cycles.apply_camera_params(cam, scene, p)
                images.append(cycles.render_rgba(scene, cam))
    finally:
        bpy.data.objects.remove(cam)
    return images


def self_intersections(vertices: np.ndarray, faces: np.ndarray) -> int:
    """How many pairs of triangles that share no vertex intersect (Blender's BVH overlap test).

    vertices: (V, 3) float; faces: (F, 3) integer. 0 for a clean closed surface.
    """
    tree = mathutils.bvhtree.BVHTree.FromPolygons(
        [tuple(map(float, v)) for v in np.asarray(vertices)], np.asarray(faces).tolist(),
        all_triangles=True)
    # A tree overlapping itself reports each crossing twice, as (i, j) and (j, i), and a
    # degenerate triangle as overlapping itself.
    return len({(min(i, j), max(i, j)) for i, j in tree.overlap(tree) if i != j})


def shaded_render(vertices: np.ndarray, faces: np.ndarray, params: dict,
                  samples: int = CYCLES_SAMPLES) -> np.ndarray:
    """A Cycles render of the mesh in matte grey, flat-shaded, over white: (H, W, 3) uint8 sRGB.

    vertices: (V, 3) float world coordinates; faces: (F, 3) integer; params: a
    `blender_camera` keyword dict. Builds its own scene (the current one is reset).
    """
    scene = cycles.reset_scene()
    cycles.configure_cycles(scene, samples=samples, filter_width=CYCLES_FILTER, max_bounces=2)
    cycles.add_sun(scene, SUN_DIRECTION, strength=SUN_STRENGTH)
    cycles.set_world_color(scene, (1.0, 1.0, 1.0), strength=AMBIENT)
    obj = cycles.add_mesh(vertices, faces, name="shaded", scene=scene)
    material = bpy.data.materials.new("matte_grey")
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (MATTE_GREY, MATTE_GREY, MATTE_GREY, 1.0)
    bsdf.inputs["Roughness"].default_value = 1.0
    bsdf.inputs["Specular IOR Level"].default_value = 0.0
    obj.data.materials.append(material)
    with quiet_stdout():
        rgba = cycles.render_rgba(scene, cycles.add_camera(scene, params, name="shaded_camera"))
    rgb = rgba[..., :3] + (1.0 - rgba[..., 3:4])  # premultiplied, over white
    return np.round(cycles.linear_to_srgb(np.clip(rgb, 0.0, 1.0)) * 255.0).astype(np.uint8)
