"""The "SoftRas" tab in the 3D Viewport's sidebar."""

from __future__ import annotations

import bpy
from bpy.types import Panel

from . import camera_refine_ops, operators, runtime


class SoftRasPanelMixin:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SoftRas"


def split_layout(layout):
    """A panel's layout set to label properties on the left, without keyframe dots."""
    layout.use_property_split = True
    layout.use_property_decorate = False
    return layout


class SoftRasSubPanelMixin(SoftRasPanelMixin):
    """A sub-panel of "Fit to Images", closed until opened."""

    bl_parent_id = "SOFTRAS_PT_fit"
    bl_options = {"DEFAULT_CLOSED"}


class SOFTRAS_PT_fit(SoftRasPanelMixin, Panel):
    bl_label = "Fit to Images"
    bl_idname = "SOFTRAS_PT_fit"

    def draw(self, context):
        layout = split_layout(self.layout)
        settings = context.scene.softras
        session = runtime.running_session()

        col = layout.column()
        col.enabled = session is None
        col.prop(settings, "mesh_source")
        if settings.mesh_source == "OBJECT":
            col.prop(settings, "target_object")
        elif settings.mesh_source == "ACTIVE":
            obj = context.active_object
            if obj is None or obj.type != "MESH":
                col.label(text="The active object is not a mesh", icon="ERROR")
            else:
                col.label(text=obj.name, icon="MESH_DATA")
        if settings.mesh_source in {"OBJECT", "ACTIVE"}:
            col.prop(settings, "align_mesh")
            col.prop(settings, "keep_topology")
        col.separator()
        col.prop(settings, "camera_source")
        if settings.camera_source == "COLLECTION":
            col.prop(settings, "camera_collection")
        col.prop(settings, "image_source")
        if settings.image_source == "FOLDER":
            col.prop(settings, "image_folder")
        draw_silhouette_settings(col, settings)

        layout.separator()
        if session is not None:
            layout.progress(factor=session.progress, type="BAR", text=session.progress_text)
            if session.mean_iou is not None:
                layout.label(text=f"Mean IoU: {session.mean_iou:.3f}")
            for name, value in session.losses.items():
                layout.label(text=f"{name}: {value:.4g}")
            threads = runtime.threads_text(session.hello)
            if threads is not None:
                layout.label(text=threads)
            layout.operator(operators.SOFTRAS_OT_cancel_fit.bl_idname, icon="CANCEL")
        else:
            row = layout.row()
            row.scale_y = 1.5
            row.operator(operators.SOFTRAS_OT_fit.bl_idname, icon="MOD_SHRINKWRAP")
            for line in runtime.last_status():
                layout.label(text=line)
            camera_refine_ops.draw_corrections(layout)


def draw_silhouette_settings(layout, settings) -> None:
    """The silhouettes setting and what its mode needs; the preview buttons."""
    layout.separator()
    layout.prop(settings, "silhouettes")
    if settings.silhouettes in {"AUTO", "MASKS"}:
        layout.prop(settings, "mask_folder")
    if settings.silhouettes == "LEARNED":
        layout.prop(settings, "model_path")
    if settings.silhouettes != "ALPHA":
        layout.prop(settings, "check_views")
        if settings.check_views:
            layout.prop(settings, "keep_flagged")
    row = layout.row(align=True)
    row.operator("softras.preview_silhouettes", icon="HIDE_OFF")
    row.operator("softras.clear_silhouette_preview", text="", icon="X")
    for line in runtime.preview_status():
        layout.label(text=line)


class SOFTRAS_PT_fit_options(SoftRasSubPanelMixin, Panel):
    bl_label = "Options"
    bl_idname = "SOFTRAS_PT_fit_options"

    def draw(self, context):
        layout = split_layout(self.layout)
        settings = context.scene.softras
        layout.enabled = runtime.running_session() is None
        col = layout.column()
        col.prop(settings, "iterations")
        col.prop(settings, "resolution")
        col.prop(settings, "sharpness")
        col.prop(settings, "smoothness")
        col.prop(settings, "fit_colors")
        col.prop(settings, "refine_cameras")
        col.prop(settings, "held_out_every")


classes = (SOFTRAS_PT_fit, SOFTRAS_PT_fit_options)


register, unregister = bpy.utils.register_classes_factory(classes)
