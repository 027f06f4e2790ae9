"""Operators and UI for cameras: import from calibration files, export, turntables.

File > Import > "Cameras and Images for Fitting", File > Export > "Cameras for
Fitting", and a "Cameras" sub-panel in the SoftRas tab. The work is in
`camera_import`; each operator is one undo step and changes nothing when it fails.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import Operator, Panel
from bpy_extras.io_utils import ExportHelper, ImportHelper

from .panels import SoftRasPanelMixin


def _fail(operator, exc: BaseException) -> set:
    operator.report({"ERROR"}, str(exc).strip() or type(exc).__name__)
    return {"CANCELLED"}


class SOFTRAS_OT_import_cameras(Operator, ImportHelper):
    """Import calibrated cameras (COLMAP model, transforms.json, Middlebury *_par.txt) with \
their images as background images, into a new collection"""

    bl_idname = "softras.import_cameras"
    bl_label = "Import Cameras and Images"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.json;*.txt;*.bin", options={"HIDDEN"})
    images_dir: StringProperty(
        name="Images Folder", subtype="DIR_PATH", default="",
        description="Where the images are (empty: beside the camera file, or in an 'images' "
                    "folder there or up to two levels above)")

    def execute(self, context):
        from . import camera_import

        try:
            collection = camera_import.import_cameras(context.scene, self.filepath,
                                                      bpy.path.abspath(self.images_dir) or None)
        except (ValueError, OSError) as exc:
            return _fail(self, exc)
        count = len(collection.objects)
        self.report({"INFO"}, f"Imported {count} cameras into the collection {collection.name!r}")
        return {"FINISHED"}


class SOFTRAS_OT_export_cameras(Operator, ExportHelper):
    """Write the scene's cameras as a transforms.json (nerfstudio, instant-ngp) or a COLMAP \
text model, for other tools"""

    bl_idname = "softras.export_cameras"
    bl_label = "Export Cameras"
    bl_options = {"REGISTER"}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})
    file_format: EnumProperty(
        name="Format",
        items=(("TRANSFORMS", "transforms.json", "One JSON file (nerfstudio, instant-ngp, NeRF)"),
               ("COLMAP", "COLMAP Text Model", "cameras.txt, images.txt and points3D.txt in a "
                "folder named like the chosen file without .json")),
        default="TRANSFORMS")
    selected_only: BoolProperty(name="Selected Only", default=False,
                                description="Only the selected cameras")

    def invoke(self, context, event):
        import os

        if not self.filepath:  # suggest transforms.json beside the .blend file
            folder = os.path.dirname(bpy.data.filepath) if bpy.data.filepath else ""
            self.filepath = os.path.join(folder, "transforms.json")
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        from pathlib import Path

        from . import camera_import

        path = Path(self.filepath)
        target = path if self.file_format == "TRANSFORMS" else path.with_suffix("")
        try:
            count = camera_import.export_cameras(context.scene, target, self.file_format,
                                                 self.selected_only)
        except (ValueError, OSError) as exc:
            return _fail(self, exc)
        self.report({"INFO"}, f"Wrote {count} cameras to {target}")
        return {"FINISHED"}


AXES = {"X": (1.0, 0.0, 0.0), "Y": (0.0, 1.0, 0.0), "Z": (0.0, 0.0, 1.0)}


class SOFTRAS_OT_add_turntable(Operator):
    """Add a ring (or rings) of cameras looking at a centre, as a turntable capture sees \
the object; optionally with a folder of photos assigned in sorted order"""

    bl_idname = "softras.add_turntable"
    bl_label = "Add Turntable Cameras"
    bl_options = {"REGISTER", "UNDO"}

    spacing: EnumProperty(name="Views", default="COUNT", items=(
        ("COUNT", "Number of Views", "A number of views spread over a full turn"),
        ("STEP", "Angle Step", "A view every given angle, as many as fit in a turn")))
    count: IntProperty(name="Views per Ring", default=24, min=1, soft_max=360)
    step: FloatProperty(name="Angle Step", subtype="ANGLE", default=0.2617993877991494,
                        min=1e-4, max=6.283185307179586)
    start: FloatProperty(name="Start Angle", subtype="ANGLE", default=0.0,
                         description="Angle of the first view, from the X axis (Y for X)")
    elevations: StringProperty(name="Elevations", default="20",
                               description="Elevation of each ring in degrees, e.g. 10, 35")
    distance: FloatProperty(name="Distance", subtype="DISTANCE", default=5.0, min=1e-4)
    lens_unit: EnumProperty(name="Lens Unit", default="MILLIMETERS", items=(
        ("MILLIMETERS", "Focal Length", "Focal length in millimetres (36 mm sensor)"),
        ("FOV", "Field of View", "Horizontal field of view")))
    lens: FloatProperty(name="Focal Length", subtype="DISTANCE_CAMERA", default=50.0, min=1.0)
    fov: FloatProperty(name="Field of View", subtype="ANGLE", default=0.6911112070083618,
                       min=0.00640536, max=3.01675)
    centre: EnumProperty(name="Centre", default="CURSOR", items=(
        ("CURSOR", "3D Cursor", "Turn around the 3D cursor"),
        ("OBJECT", "Object", "Turn around an object's origin")))
    centre_object: StringProperty(name="Object", default="")
    axis: EnumProperty(name="Axis", default="Z", items=(
        ("X", "X", "The world X axis"), ("Y", "Y", "The world Y axis"),
        ("Z", "Z", "The world Z axis"),
        ("OBJECT", "Object Z", "The centre object's local Z axis")))
    clockwise: BoolProperty(name="Clockwise", default=False,
                            description="Turn clockwise seen from the axis' tip")
    image_folder: StringProperty(name="Images", subtype="DIR_PATH", default="",
                                 description="Photos assigned to the views in sorted order "
                                             "(ring after ring); empty: no images")

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=360)

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "spacing")
        layout.prop(self, "count" if self.spacing == "COUNT" else "step")
        for name in ("start", "elevations", "distance", "lens_unit"):
            layout.prop(self, name)
        layout.prop(self, "lens" if self.lens_unit == "MILLIMETERS" else "fov")
        layout.prop(self, "centre")
        if self.centre == "OBJECT" or self.axis == "OBJECT":
            layout.prop_search(self, "centre_object", context.scene, "objects")
        for name in ("axis", "clockwise", "image_folder"):
            layout.prop(self, name)

    def spec(self, context):
        """The operator's options as a `camera_import.TurntableSpec`."""
        import math

        from . import camera_import
        from .backend.core.camera import field_of_view_to_lens

        obj = context.scene.objects.get(self.centre_object)
        if (self.centre == "OBJECT" or self.axis == "OBJECT") and obj is None:
            raise camera_import.CameraImportError(
                f"no object {self.centre_object!r} in the scene: pick the turntable's object")
        centre = (obj.matrix_world.translation if self.centre == "OBJECT"
                  else context.scene.cursor.location)
        axis = (obj.matrix_world.to_3x3().col[2] if self.axis == "OBJECT" else AXES[self.axis])
        lens = (self.lens if self.lens_unit == "MILLIMETERS"
                else field_of_view_to_lens(math.degrees(self.fov)))
        return camera_import.TurntableSpec(
            count=self.count if self.spacing == "COUNT" else None,
            step_deg=math.degrees(self.step) if self.spacing == "STEP" else None,
            start_deg=math.degrees(self.start),
            elevations_deg=camera_import.parse_angles(self.elevations),
            distance=self.distance, lens=lens, centre=tuple(centre), axis=tuple(axis),
            clockwise=self.clockwise, image_folder=self.image_folder)

    def execute(self, context):
        from . import camera_import

        try:
            collection = camera_import.add_turntable(context.scene, self.spec(context))
        except (ValueError, OSError) as exc:
            return _fail(self, exc)
        self.report({"INFO"}, f"Added {len(collection.objects)} turntable cameras")
        return {"FINISHED"}


class SOFTRAS_PT_cameras(SoftRasPanelMixin, Panel):
    bl_label = "Cameras"
    bl_idname = "SOFTRAS_PT_cameras"
    bl_parent_id = "SOFTRAS_PT_fit"

    def draw(self, context):
        col = self.layout.column(align=True)
        col.operator(SOFTRAS_OT_import_cameras.bl_idname, text="Import Cameras and Images",
                     icon="IMPORT")
        col.operator(SOFTRAS_OT_add_turntable.bl_idname, icon="CON_ROTLIKE")
        col.operator(SOFTRAS_OT_export_cameras.bl_idname, text="Export Cameras", icon="EXPORT")


def _import_menu(self, context):
    self.layout.operator(SOFTRAS_OT_import_cameras.bl_idname,
                         text="Cameras and Images for Fitting")


def _export_menu(self, context):
    self.layout.operator(SOFTRAS_OT_export_cameras.bl_idname,
                         text="Cameras for Fitting (transforms.json, COLMAP)")


classes = (SOFTRAS_OT_import_cameras, SOFTRAS_OT_export_cameras, SOFTRAS_OT_add_turntable,
           SOFTRAS_PT_cameras)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.TOPBAR_MT_file_import.append(_import_menu)
    bpy.types.TOPBAR_MT_file_export.append(_export_menu)


def unregister():
    bpy.types.TOPBAR_MT_file_export.remove(_export_menu)
    bpy.types.TOPBAR_MT_file_import.remove(_import_menu)
    _unregister_classes()
