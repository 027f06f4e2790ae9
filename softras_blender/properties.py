"""The fit's settings, saved with the scene (``scene.softras``).

The live status of a running fit is plain Python state in `runtime`, so it is
never saved into a .blend file nor touched by undo.
"""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy.types import PropertyGroup

from . import fit_options


def _is_mesh(_self, obj) -> bool:
    return obj.type == "MESH"


class SoftRasSettings(PropertyGroup):
    """``scene.softras``: what to fit and how."""

    mesh_source: EnumProperty(
        name="Start From",
        description="The mesh that is deformed to match the images",
        items=(
            ("ACTIVE", "Active Object", "The active mesh object"),
            ("OBJECT", "Object", "A chosen mesh object"),
            ("HULL", "Visual Hull",
             "No mesh: start from the silhouettes' visual hull (makes a new object)"),
            ("SPHERE", "Sphere",
             "No mesh: start from a sphere stretched over the silhouettes' bounding box "
             "(makes a new object)"),
        ),
        default="ACTIVE",
    )
    align_mesh: BoolProperty(
        name="Align First", default=False,
        description="Move and scale the mesh onto the silhouettes before fitting (for a "
                    "mesh that sits away from the object in the images)")
    keep_topology: BoolProperty(
        name="Keep Topology", default=False,
        description="Fit the mesh's own vertices as a shape key (no triangles added or "
                    "removed); off: adapt the triangles to the images in a new object "
                    "\"<name> SoftRas Fit\", the mesh left untouched")
    target_object: PointerProperty(name="Object", type=bpy.types.Object, poll=_is_mesh,
                                   description="The mesh object to fit")
    camera_source: EnumProperty(
        name="Cameras",
        items=(
            ("ALL", "All With Images", "Every camera in the scene that has a reference image"),
            ("COLLECTION", "Collection", "The cameras in a collection"),
        ),
        default="ALL",
    )
    camera_collection: PointerProperty(name="Collection", type=bpy.types.Collection,
                                       description="The collection holding the cameras")
    image_source: EnumProperty(
        name="Images",
        description="Where each camera's reference image comes from (its alpha is the "
                    "silhouette)",
        items=(
            ("BACKGROUND", "Background Images", "Each camera's background image"),
            ("FOLDER", "Folder", "A folder with one image per camera, named after the camera"),
        ),
        default="BACKGROUND",
    )
    image_folder: StringProperty(name="Folder", subtype="DIR_PATH",
                                 description="Folder with <camera name>.png (or .exr, ...)")
    iterations: IntProperty(
        name="Iterations", default=fit_options.backend_defaults()["iterations"], min=1,
        soft_max=5000, max=100000, description="Optimisation steps")
    resolution: IntProperty(
        name="Resolution", default=fit_options.DEFAULT_RESOLUTION, min=0, soft_max=1024,
        subtype="PIXEL",
        description="Longest image side the fit works at (images are scaled down to it); "
                    "0 fits at the full render resolution")
    sharpness: EnumProperty(
        name="Sharpness",
        description="How soft the silhouette edges start and end (soft fits coarse shapes "
                    "robustly, sharp recovers detail)",
        items=[(key, preset.label, preset.description)
               for key, preset in fit_options.SHARPNESS_PRESETS.items()],
        default=fit_options.DEFAULT_SHARPNESS,
    )
    fit_colors: BoolProperty(name="Fit Colours", default=False,
                             description="Also fit per-vertex colours to the images' colours "
                                         "(stored in the 'SoftRas Color' attribute)")
    smoothness: FloatProperty(name="Smoothness", default=1.0, min=0.0, soft_max=10.0,
                              description="Weight of the smoothing terms (Laplacian, flatness, "
                                          "what no view sees edge-on); "
                                          "higher keeps the surface smoother")
    silhouettes: EnumProperty(
        name="Silhouettes",
        description="How the backend finds each image's silhouette",
        items=(
            ("AUTO", "Auto", "The image's alpha when it has transparency, else its mask when "
             "there is one, else keyed out of its backdrop"),
            ("ALPHA", "Alpha", "The image's alpha channel (renders with a transparent film)"),
            ("MASKS", "Masks", "One mask image per camera (white = object): from the masks "
             "folder, matched by image name, or the camera file's mask_path"),
            ("KEY", "Key", "The backdrop (plain, dark, light or green) keyed out from the "
             "image border, refined by GrabCut"),
            ("LEARNED", "Learned", "A salient-object model (U2-Net class, ONNX file)"),
        ),
        default="AUTO",
    )
    mask_folder: StringProperty(name="Masks", subtype="DIR_PATH",
                                description="Folder with one mask per image, named after it "
                                            "(photo.png or photo_mask.png; white = object)")
    model_path: StringProperty(
        name="Model", subtype="FILE_PATH",
        description="The salient-object ONNX model for Learned (empty: the u2netp.onnx that "
                    "Install Backend downloads when online access is allowed)")
    check_views: BoolProperty(
        name="Check Views", default=True,
        description="Compare the views' silhouettes through a common visual hull; views that "
                    "disagree are flagged (keyed masks are also refined by it)")
    keep_flagged: BoolProperty(
        name="Keep Flagged Views", default=False,
        description="Fit the views the check flags too (by default they are left out)")
    refine_cameras: BoolProperty(
        name="Refine Cameras", default=False,
        description="Also correct each camera's pose by a little (for calibrations that are "
                    "slightly off); the corrections are listed after the fit and written to "
                    "the cameras by Apply Refined Cameras")
    held_out_every: IntProperty(
        name="Hold Out Every", default=0, min=0, soft_max=10,
        description="Hold out every n-th camera: never fitted, only measured (0: none)")
    # "Solve Cameras" (solve_operators.py): cameras for photos that have none.
    solve_folder: StringProperty(
        name="Photos", subtype="DIR_PATH",
        description="Folder of photos (.jpg, .png) of a still subject from all around, "
                    "without cameras; at least 3, best 10 or more taken 10 to 20 degrees apart")
    solve_ordering: EnumProperty(
        name="Matching",
        items=(
            ("AUTO", "Automatic", "Every pair of photos up to 60 photos, else in file order"),
            ("EXHAUSTIVE", "Every Pair", "Match every pair of photos (any order; slow for "
             "many photos)"),
            ("SEQUENTIAL", "File Order", "Match each photo with the next few in file-name "
             "order (a turntable or a walk around the subject)"),
        ),
        default="AUTO",
    )
    solve_up: EnumProperty(
        name="Up",
        description="Which way is up in the solved scene (it becomes +Z)",
        items=(
            ("AUTO", "Automatic", "The camera ring's axis when the cameras circle the "
             "subject, else the photos' own up"),
            ("RING", "Camera Ring", "The axis of the ring of cameras around the subject"),
            ("CAMERA", "Photos' Up", "The photos' own up direction (photos taken upright)"),
            ("GRAVITY", "Gravity", "The direction gravity pulls in the photos, as you give "
             "it (Gravity)"),
        ),
        default="AUTO",
    )
    solve_gravity: FloatVectorProperty(
        name="Gravity", size=3, default=(0.0, -1.0, 0.0), subtype="XYZ",
        description="The direction gravity pulls in the photos: x to the photo's right, y up "
                    "it, z out of it towards you (0, -1, 0: upright photos; -1, 0, 0: photos "
                    "taken with the camera's top turned to the left); the solved scene is turned "
                    "so that it points down")
    solve_distance: FloatProperty(
        name="Camera Distance", default=0.0, min=0.0, subtype="DISTANCE",
        description="The cameras' typical distance from the subject, if known: sets the "
                    "scene's scale (0: the subject about 1 unit in radius)")


classes = (SoftRasSettings,)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.Scene.softras = PointerProperty(type=SoftRasSettings)


def unregister():
    del bpy.types.Scene.softras
    _unregister_classes()
