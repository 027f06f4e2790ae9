"""Refined cameras in Blender: the last fit's per-view camera corrections (fits run with
"Refine Cameras"), listed in the panel, and "Apply Refined Cameras", which writes them
to the camera objects as one undo step.

A correction is applied to the pose the camera had when it was fitted (its
``world_to_camera``, carried in the fit's summary), not to its current one, so applying
twice, or after an undo, gives the same cameras. A flagged correction (it ran past the
fit's limits) is never applied: the view is named instead.
"""

from __future__ import annotations

import bpy
import numpy as np
from bpy.types import Operator
from mathutils import Matrix

from . import runtime, scene_export
from .backend.core.camera import camera_to_world


def last_corrections() -> list[dict]:
    """The last finished fit's corrections (`ViewCorrection.to_dict` plus the fitted
    camera's ``world_to_camera`` and ``fx_per_px``); empty without refinement."""
    result = runtime.last_result()
    return list(result.get("camera_corrections", [])) if result else []


def correction_lines(corrections: list[dict]) -> list[str]:
    """One line per view for the panel and the report."""
    return [f"{c['name']}: {c['rotation_deg']:.2f} deg, {c['shift']:.3g} units, "
            f"{c['reprojection_px']:.1f} px" + (" (flagged)" if c["flagged"] else "")
            for c in corrections]


def refined_matrix_world(correction: dict) -> np.ndarray:
    """The corrected camera's unscaled ``matrix_world`` (4, 4): ``M @ matrix_world`` of
    the pose it was fitted at."""
    fitted = camera_to_world(np.asarray(correction["world_to_camera"], dtype=np.float64))
    return np.asarray(correction["world_correction"], dtype=np.float64) @ fitted


def apply_corrections(scene, corrections: list[dict]) -> tuple[list[str], list[str]]:
    """Write the corrections to the scene's cameras. Returns (names applied, lines saying
    which were skipped and why)."""
    applied, skipped, scaled = [], [], set()
    for c in corrections:
        obj = scene.objects.get(c["name"])
        if c["flagged"]:
            skipped.append(f"{c['name']}: not applied, the correction ran away ({c['reason']})")
            continue
        if obj is None or obj.type != "CAMERA":
            skipped.append(f"{c['name']}: not applied, the scene has no camera of that name")
            continue
        scale = Matrix.Diagonal((*obj.matrix_world.to_scale(), 1.0))
        obj.matrix_world = Matrix(refined_matrix_world(c).tolist()) @ scale
        if c["focal_scale"] != 1.0 and obj.data.name not in scaled:
            scaled.add(obj.data.name)
            _set_focal(scene, obj, c["fx_per_px"] * c["focal_scale"])
        applied.append(c["name"])
    return applied, skipped


def _set_focal(scene, obj, fx_per_px: float) -> None:
    """Scale the camera's lens (orthographic: its scale) so fx / image width is
    ``fx_per_px``, whatever it is now."""
    cam = scene_export.camera_matrices(scene, obj)
    ratio = fx_per_px / (cam.intrinsics[0, 0] / cam.width)
    if obj.data.type == "ORTHO":
        obj.data.ortho_scale /= ratio
    else:
        obj.data.lens *= ratio


class SOFTRAS_OT_apply_refined_cameras(Operator):
    """Move the cameras to the poses the last fit refined (flagged ones stay)"""

    bl_idname = "softras.apply_refined_cameras"
    bl_label = "Apply Refined Cameras"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return runtime.running_session() is None and bool(last_corrections())

    def execute(self, context):
        applied, skipped = apply_corrections(context.scene, last_corrections())
        for line in skipped:
            self.report({"WARNING"}, line)
        if not applied:
            self.report({"ERROR"}, "No refined camera could be applied (see the warnings)")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Applied the refined poses of {len(applied)} cameras")
        return {"FINISHED"}


def draw_corrections(layout) -> None:
    """The last fit's corrections and the apply button (nothing without refinement)."""
    corrections = last_corrections()
    if not corrections:
        return
    box = layout.box()
    box.label(text="Refined cameras", icon="CAMERA_DATA")
    for line, c in zip(correction_lines(corrections), corrections, strict=True):
        box.label(text=line, icon="ERROR" if c["flagged"] else "NONE")
    box.operator(SOFTRAS_OT_apply_refined_cameras.bl_idname, icon="CHECKMARK")


classes = (SOFTRAS_OT_apply_refined_cameras,)

register, unregister = bpy.utils.register_classes_factory(classes)
