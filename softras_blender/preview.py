"""Preview Silhouettes: ask the backend for the cameras' masks without fitting, and show
each mask over its camera's image in the viewport.

The masks come from a "segment" request (docs/protocol.md), found exactly as a fit
would find them (the panel's Silhouettes setting, the multi-view check). Each mask
becomes a second background image of its camera, tinted and half transparent, drawn
in front; "Clear Silhouette Preview" removes them and their images again. Preview
images are recognised by their name prefix, `PREVIEW_PREFIX`.
"""

from __future__ import annotations

import bpy
import numpy as np
from bpy.types import Operator

from . import runtime
from .backend.core import messages
from .modal import TimerModal, refuse_while_busy
from .runtime import state

PREVIEW_PREFIX = "SoftRas Mask "
PREVIEW_TINT = (0.1, 1.0, 0.2)  # linear RGB of the object in the preview
PREVIEW_ALPHA = 0.5


class PreviewFailed(RuntimeError):
    """The backend could not find the silhouettes; the message is for the user."""


def preview_request(context) -> tuple[list[messages.View], dict]:
    """The views (cameras, images and masks, at the fit's resolution) and the silhouettes
    field the panel's settings describe; `scene_export.ExportError` when they cannot be
    read."""
    from . import scene_export

    scene = context.scene
    settings = scene.softras
    cameras = scene_export.scene_cameras(scene, settings.camera_source,
                                         settings.camera_collection, settings.image_source,
                                         settings.image_folder)
    views = scene_export.export_views(scene, cameras, settings.image_source,
                                      settings.image_folder, 0, settings.resolution,
                                      settings.silhouettes, settings.mask_folder)
    silhouettes = (scene_export.silhouette_request(settings)
                   or messages.silhouettes_settings("alpha"))
    return views, silhouettes


class PreviewJob:
    """One segment request: `start` launches the backend, `step` (from a timer or a
    loop) sends the request once it is up and returns True once the masks arrived."""

    def __init__(self, views: list[messages.View], silhouettes: dict):
        self.views = views
        self.silhouettes = silhouettes
        self.client = None
        self.sent = False
        self.answer: dict | None = None

    def start(self, launch) -> None:
        from .client import BackendClient

        self.client = BackendClient(launch.command, env=launch.env, cwd=launch.cwd)
        self.client.launch()

    def step(self) -> bool:
        events = self.client.poll()
        if not self.sent:
            if self.client.hello is None:
                return False
            self.client.segment(self.views, self.silhouettes)
            self.sent = True
        for event in events:
            if event["type"] == "error":
                raise PreviewFailed(event["message"])
            if event["type"] == "masks":
                self.answer = event
        return self.answer is not None

    def close(self) -> None:
        if self.client is not None:
            self.client.shutdown()


def show_masks(scene, names: list[str], masks: list[np.ndarray]) -> int:
    """Each mask (H, W) float in [0, 1], row 0 at the top, over camera ``names[k]``'s
    image: a tinted, half-transparent background image in front, stretched over the
    camera frame (the masks cover the whole frame). Replaces an earlier preview.
    Returns how many cameras show one."""
    clear_preview()
    shown = 0
    for name, mask in zip(names, masks, strict=True):
        obj = scene.objects.get(name)
        if obj is None or obj.type != "CAMERA":
            continue
        h, w = mask.shape
        image = bpy.data.images.new(PREVIEW_PREFIX + name, w, h, alpha=True)
        rgba = np.empty((h, w, 4), dtype=np.float32)
        rgba[..., :3] = PREVIEW_TINT
        rgba[..., 3] = np.clip(mask, 0.0, 1.0)
        image.pixels.foreach_set(rgba[::-1].ravel())  # Blender stores row 0 at the bottom
        image.pack()
        slot = obj.data.background_images.new()
        slot.image = image
        slot.alpha = PREVIEW_ALPHA
        slot.display_depth = "FRONT"
        slot.frame_method = "STRETCH"
        obj.data.show_background_images = True
        shown += 1
    return shown


def clear_preview() -> int:
    """Remove every preview background image and its image; returns how many."""
    removed = 0
    for camera in bpy.data.cameras:
        for slot in list(camera.background_images):
            if slot.image is not None and slot.image.name.startswith(PREVIEW_PREFIX):
                camera.background_images.remove(slot)
                removed += 1
    for image in list(bpy.data.images):
        if image.name.startswith(PREVIEW_PREFIX):
            bpy.data.images.remove(image)
    return removed


def preview_lines(answer: dict, shown: int) -> list[str]:
    """What the preview found, for the panel: how many masks, the flagged views."""
    report = answer.get("silhouettes") or {}
    sources = sorted(set((report.get("sources") or {}).values()))
    lines = [f"Silhouettes of {shown} cameras ({', '.join(sources) or 'none'})"]
    lines += [f"Flagged: {f['reason']}" for f in report.get("flagged", [])]
    return lines


class SOFTRAS_OT_preview_silhouettes(TimerModal, Operator):
    """Find each camera's silhouette as a fit would (the Silhouettes setting) and show it
    over the camera's image, without fitting"""

    bl_idname = "softras.preview_silhouettes"
    bl_label = "Preview Silhouettes"

    @classmethod
    def poll(cls, context):
        return refuse_while_busy(cls)

    # TimerModal runs the preview: execute() to the end (background), or modal() from a
    # timer; Esc cancels.

    def _begin(self, context):
        from .scene_export import ExportError

        try:
            views, silhouettes = preview_request(context)
            job = PreviewJob(views, silhouettes)
            job.start(runtime.backend_launch(runtime.backend_settings(context)))
        except (ExportError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return None
        except Exception as exc:
            self.report({"ERROR"}, f"Cannot start the backend: {exc}")
            return None
        self._job, self._timer = job, None
        state.preview, state.preview_status = job, []
        return job

    def _finish(self, context, job):
        state.preview = None
        job.close()
        shown = show_masks(context.scene, job.answer["names"], job.answer["masks"])
        state.preview_status = preview_lines(job.answer, shown)
        self.report({"INFO"}, "; ".join(state.preview_status))
        return {"FINISHED"}

    def _fail(self, context, job, exc):
        state.preview = None
        job.close()
        state.preview_status = self._report_failure("Preview", exc)
        return {"CANCELLED"}

    def _cancel(self, context, job):
        self._stop_timer(context)
        state.preview = None
        job.close()
        state.preview_status = ["Preview cancelled"]
        self.report({"INFO"}, state.preview_status[0])
        return {"CANCELLED"}


class SOFTRAS_OT_clear_silhouette_preview(Operator):
    """Remove the silhouette preview from the cameras"""

    bl_idname = "softras.clear_silhouette_preview"
    bl_label = "Clear Silhouette Preview"

    def execute(self, context):
        removed = clear_preview()
        state.preview_status = []
        self.report({"INFO"}, f"Removed the preview from {removed} cameras")
        return {"FINISHED"}


classes = (SOFTRAS_OT_preview_silhouettes, SOFTRAS_OT_clear_silhouette_preview)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)
register = _register_classes


def unregister():
    job = state.preview
    if job is not None:
        job.close()
        state.preview = None
    _unregister_classes()
