"""Fitted vertices -> Blender, reversibly.

Vertices go into a shape key "SoftRas Fit" on the fitted object, so its own shape
(the basis) stays as it was; a fit that changes the topology (or starts from the
visual hull) writes a new object instead. `FitTarget.restore` puts everything
back as it was before the fit. Objects are looked up by name on every call
(undo replaces Blender's data blocks, so stored references would go stale).
"""

from __future__ import annotations

import bpy
import numpy as np

SHAPE_KEY = "SoftRas Fit"
COLOR_ATTRIBUTE = "SoftRas Color"
RESULT_SUFFIX = " SoftRas Fit"


def world_to_local(matrix_world) -> np.ndarray:
    """(4, 4) float64 inverse of an object's world matrix; ValueError if singular."""
    world = np.array(matrix_world, dtype=np.float64)
    if abs(np.linalg.det(world[:3, :3])) < 1e-12:
        raise ValueError("the object's transform is singular (a zero scale): apply or fix "
                         "its scale before fitting")
    return np.linalg.inv(world)


def transform(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 3) points times a (4, 4) affine matrix -> (N, 3) float32."""
    points = np.asarray(points, dtype=np.float64)
    return (points @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)


def set_mesh_geometry(mesh, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Replace a mesh's geometry by triangles. vertices (V, 3) float, faces (F, 3) int."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    mesh.clear_geometry()
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, dtype=np.int32))
    mesh.update()


def _color_attribute(mesh):
    """The fit's colour attribute, or None; ValueError if that name holds something else."""
    attribute = mesh.color_attributes.get(COLOR_ATTRIBUTE)
    if attribute is not None and (attribute.domain != "POINT"
                                  or attribute.data_type != "FLOAT_COLOR"):
        raise ValueError(f"the mesh {mesh.name!r} has a colour attribute {COLOR_ATTRIBUTE!r} "
                         "that is not a per-vertex float colour: rename or remove it")
    return attribute


class FitTarget:
    """The objects a fit writes to, and what it takes to undo the writes.

    source_name: the mesh object being fitted, or None when the fit starts from the
    silhouettes (then ``start_name``, "Visual Hull" or "Sphere", names the new object);
    scene_name: the scene whose collection gets a new result object.
    """

    def __init__(self, source_name: str | None, scene_name: str,
                 start_name: str = "Visual Hull"):
        self.source_name = source_name
        self.start_name = start_name
        self.scene_name = scene_name
        self.result_name: str | None = None  # a new object holding a changed topology
        self._saved: dict | None = None
        self._to_local = None
        self._vertex_count = None
        if source_name is not None:
            obj = self.source
            self._to_local = world_to_local(obj.matrix_world)
            self._vertex_count = len(obj.data.vertices)

    @property
    def source(self):
        if self.source_name is None:
            return None
        obj = bpy.data.objects.get(self.source_name)
        if obj is None:
            raise RuntimeError(f"the object {self.source_name!r} being fitted was deleted")
        return obj

    @property
    def result(self):
        return bpy.data.objects.get(self.result_name) if self.result_name else None

    def apply(self, vertices: np.ndarray, faces: np.ndarray | None = None) -> None:
        """Show fitted world-space vertices (V, 3); faces (F, 3) when the topology changed
        (the backend sends them only then), which moves the fit to a new object."""
        vertices = np.asarray(vertices, dtype=np.float32)
        if faces is not None or self.result_name is not None or self.source_name is None:
            self._apply_new_object(vertices, faces)
            return
        if len(vertices) != self._vertex_count:
            raise RuntimeError(f"the backend sent {len(vertices)} vertices for "
                               f"{self.source_name!r}, which has {self._vertex_count}")
        obj = self.source
        key = self._fit_key(obj)
        key.points.foreach_set("co", transform(vertices, self._to_local).ravel())
        obj.data.update()

    def apply_colors(self, colors: np.ndarray) -> None:
        """Per-vertex linear RGB (V, 3) into the colour attribute of the shown mesh."""
        obj = self.result or self.source
        mesh = obj.data
        colors = np.asarray(colors, dtype=np.float32)
        if colors.shape != (len(mesh.vertices), 3):
            raise RuntimeError(f"the backend sent colours of shape {colors.shape} for a mesh "
                               f"with {len(mesh.vertices)} vertices")
        attribute = _color_attribute(mesh)
        if attribute is None:
            attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        rgba = np.concatenate([colors, np.ones((len(colors), 1), np.float32)], axis=1)
        attribute.data.foreach_set("color", rgba.ravel())
        mesh.color_attributes.active_color = attribute
        mesh.update()

    def restore(self) -> None:
        """Undo every write: remove the result object, the fit's shape key and colours."""
        result = self.result
        if result is not None:
            mesh = result.data
            bpy.data.objects.remove(result)
            if mesh.users == 0:
                bpy.data.meshes.remove(mesh)
            self.result_name = None
        if self._saved is None or self.source_name is None:
            return
        obj = bpy.data.objects.get(self.source_name)
        if obj is None:
            return
        saved, self._saved = self._saved, None
        keys = obj.data.shape_keys
        if not saved["had_keys"]:
            obj.shape_key_clear()
        elif keys is not None and SHAPE_KEY in keys.key_blocks:
            block = keys.key_blocks[SHAPE_KEY]
            if saved["key_co"] is None:
                obj.shape_key_remove(block)
            else:
                block.points.foreach_set("co", saved["key_co"])
                block.value = saved["key_value"]
        obj.active_shape_key_index = saved["active_index"]
        mesh = obj.data
        attribute = _color_attribute(mesh)
        if attribute is not None:
            if saved["colors"] is None:
                mesh.color_attributes.remove(attribute)
            else:
                attribute.data.foreach_set("color", saved["colors"])
        mesh.update()

    def _fit_key(self, obj):
        """The fit's shape key, created (with a basis) on first use; saves the old state."""
        keys = obj.data.shape_keys
        if self._saved is None:
            block = keys.key_blocks.get(SHAPE_KEY) if keys else None
            key_co = None
            if block is not None:
                key_co = np.empty(len(block.points) * 3, dtype=np.float32)
                block.points.foreach_get("co", key_co)
            attribute = _color_attribute(obj.data)
            colors = None
            if attribute is not None:
                colors = np.empty(len(attribute.data) * 4, dtype=np.float32)
                attribute.data.foreach_get("color", colors)
            self._saved = {
                "had_keys": keys is not None,
                "key_co": key_co,
                "key_value": block.value if block is not None else 0.0,
                "active_index": obj.active_shape_key_index,
                "colors": colors,
            }
        if keys is None:
            obj.shape_key_add(name="Basis", from_mix=False)
            keys = obj.data.shape_keys
        block = keys.key_blocks.get(SHAPE_KEY)
        if block is None:
            block = obj.shape_key_add(name=SHAPE_KEY, from_mix=False)
        block.value = 1.0
        obj.active_shape_key_index = list(keys.key_blocks).index(block)
        return block

    def _apply_new_object(self, vertices: np.ndarray, faces: np.ndarray | None) -> None:
        obj = self.result
        if obj is None:
            if faces is None:
                raise RuntimeError("the backend sent vertices for a new topology without its "
                                   "faces")
            base = self.source_name or self.start_name
            mesh = bpy.data.meshes.new(base + RESULT_SUFFIX)
            obj = bpy.data.objects.new(base + RESULT_SUFFIX, mesh)
            scene = bpy.data.scenes.get(self.scene_name)
            if scene is None:
                raise RuntimeError(f"the scene {self.scene_name!r} being fitted was deleted")
            scene.collection.objects.link(obj)
            if self.source_name is not None:
                obj.matrix_world = self.source.matrix_world.copy()
            self.result_name = obj.name
        to_local = (self._to_local if self._to_local is not None else np.eye(4))
        local = transform(vertices, to_local)
        mesh = obj.data
        if faces is not None:
            set_mesh_geometry(mesh, local, faces)
            return
        if len(local) != len(mesh.vertices):
            raise RuntimeError(f"the backend sent {len(local)} vertices for a mesh with "
                               f"{len(mesh.vertices)}")
        mesh.attributes["position"].data.foreach_set("vector", local.ravel())
        mesh.update()
