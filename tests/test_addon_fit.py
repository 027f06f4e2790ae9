"""The add-on's "Fit to Images" operator in real Blender (bpy), against the real backend.

The scene: Suzanne rendered by Cycles from 8 cameras (64x64 PNGs with a transparent
film) as the cameras' background images, and a UV sphere to fit; fits run at 32x32
on the CPU for a few dozen iterations. The modal path is driven by the test: it
plays Blender's event loop, calling the operator's modal() with timer and Esc events.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

bpy = pytest.importorskip("bpy")

from backend.render.renderer import Cameras, RenderSettings, render_silhouette  # noqa: E402
from devtools import demo  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]

ITERATIONS = 30
RESOLUTION = 32
SPHERE = "Sphere"


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    return demo.build_scene(tmp_path_factory.mktemp("fit_scene"), cameras=8, size=64,
                            samples=2, start="UV_SPHERE")


@pytest.fixture
def scene(scene_file, addon):
    """A freshly opened copy of the scene, the sphere active, small fit settings, Keep
    Topology on (the shape-key path these tests check; the default, Adapt, writes a new
    object: test_adapt_writes_a_new_object_and_cancelling_removes_it)."""
    bpy.ops.wm.open_mainfile(filepath=str(scene_file))
    scene = bpy.context.scene
    bpy.context.view_layer.objects.active = scene.objects[SPHERE]
    settings = scene.softras
    settings.iterations = ITERATIONS
    settings.resolution = RESOLUTION
    settings.keep_topology = True
    return scene


def coordinates(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def key_coordinates(obj, name="SoftRas Fit") -> np.ndarray:
    block = obj.data.shape_keys.key_blocks[name]
    co = np.empty(len(block.points) * 3, np.float32)
    block.points.foreach_get("co", co)
    return co.reshape(-1, 3)


def assert_untouched(obj, original: np.ndarray) -> None:
    """The mesh is exactly as it was: same coordinates, no shape keys, no fit colours."""
    assert obj.data.shape_keys is None
    np.testing.assert_array_equal(coordinates(obj), original)
    assert "SoftRas Color" not in obj.data.color_attributes
    assert not [o for o in bpy.data.objects if o.name.endswith("SoftRas Fit")]


def mean_iou(scene, local_vertices: np.ndarray, obj) -> float:
    """Hard IoU of the mesh's silhouettes against the targets, through our renderer."""
    from softras_blender import scene_export

    settings = scene.softras
    cameras = scene_export.scene_cameras(scene, "ALL")
    views = scene_export.export_views(scene, cameras, "BACKGROUND", resolution=settings.resolution)
    world = np.array(obj.matrix_world)
    vertices = local_vertices @ world[:3, :3].T + world[:3, 3]
    obj.data.calc_loop_triangles()
    faces = np.empty(len(obj.data.loop_triangles) * 3, np.int32)
    obj.data.loop_triangles.foreach_get("vertices", faces)
    cams = Cameras.from_matrices([v.camera for v in views], dtype=torch.float32)
    alpha = render_silhouette(torch.tensor(vertices, dtype=torch.float32),
                              torch.tensor(faces.reshape(-1, 3), dtype=torch.int64), cams,
                              RenderSettings(sigma=1e-3)).numpy() > 0.5
    target = np.stack([v.image[..., 3] for v in views]) > 0.5
    return float(np.mean((alpha & target).sum((1, 2)) / (alpha | target).sum((1, 2))))


class DrivenFit:
    """Stands in for the operator instance Blender makes on invoke, so the test can play
    Blender's event loop: `begin` is invoke without the window's timer and modal handler
    (a background Blender has neither), `modal` is the operator's own."""

    from softras_blender.operators import SOFTRAS_OT_fit as _op

    _begin = _op._begin
    _refuse = _op._refuse
    modal = _op.modal
    _finish = _op._finish
    _fail = _op._fail
    _cancel = _op._cancel
    _stop_timer = _op._stop_timer
    _backend_launch = _op._backend_launch
    _report_failure = _op._report_failure
    _cancel_asked = _op._cancel_asked
    _show_progress = _op._show_progress

    def __init__(self, device="CPU", backend_command="", threads=-1):
        self.device = device
        self.backend_command = backend_command
        self.threads = threads
        self.contact_sheet = ""  # the operator's property: no contact sheet
        self.reports = []

    def report(self, level, message):
        self.reports.append((next(iter(level)), message))

    def begin(self, context):
        return self._begin(context)

    def tick(self, context, kind="TIMER"):
        return self.modal(context, SimpleNamespace(type=kind, value="NOTHING"))

    def run_until(self, context, condition, timeout=180.0):
        """Timer events every 0.1 s until ``condition(result)``; returns the last result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.tick(context)
            if condition(result):
                return result
            time.sleep(0.1)
        raise TimeoutError("the fit did not get there in time")


# -- background mode ---------------------------------------------------------------------


def test_background_fit_raises_iou_into_a_shape_key_and_keeps_the_basis(scene, addon):
    from softras_blender import runtime

    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    before = mean_iou(scene, original, sphere)

    assert bpy.ops.softras.fit(device="CPU") == {"FINISHED"}

    keys = sphere.data.shape_keys.key_blocks
    assert list(keys.keys()) == ["Basis", "SoftRas Fit"]
    assert keys["SoftRas Fit"].value == 1.0
    np.testing.assert_array_equal(coordinates(sphere), original)
    np.testing.assert_array_equal(key_coordinates(sphere, "Basis"), original)
    fitted = key_coordinates(sphere)
    after = mean_iou(scene, fitted, sphere)
    assert after > before + 0.05, (before, after)
    result = runtime.last_result()
    assert result["status"] == "done" and result["object"] == SPHERE
    assert set(result["fit_iou"]) == {f"Camera.{i:02d}" for i in range(8)}
    assert abs(result["mean_fit_iou"] - after) < 0.1
    assert runtime.running_session() is None
    assert runtime.last_outcome() is runtime.Outcome.FITTED


def test_adapt_writes_a_new_object_and_leaves_the_mesh_untouched(scene, addon):
    from softras_blender import runtime

    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    scene.softras.keep_topology = False  # the default: Adapt
    assert bpy.ops.softras.fit(device="CPU") == {"FINISHED"}
    assert sphere.data.shape_keys is None
    np.testing.assert_array_equal(coordinates(sphere), original)
    fitted = bpy.data.objects[SPHERE + " SoftRas Fit"]
    assert len(fitted.data.polygons) != len(sphere.data.polygons)  # remeshed
    assert runtime.last_result()["status"] == "done"


def test_adapt_cancelled_removes_the_new_object(scene, addon):
    context = bpy.context
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    scene.softras.keep_topology = False
    op = DrivenFit()
    session = op.begin(context)
    op.run_until(context, lambda result: session.updates >= 1)
    assert SPHERE + " SoftRas Fit" in bpy.data.objects  # the fit was showing
    assert op.tick(context, "ESC") == {"CANCELLED"}
    assert_untouched(bpy.data.objects[SPHERE], original)


# -- the modal path, driven by the test ----------------------------------------------------


def test_modal_fit_applies_streamed_vertices_while_running(scene, addon):
    from softras_blender import runtime

    context = bpy.context
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    op = DrivenFit()
    session = op.begin(context)
    assert session is not None and runtime.running_session() is session

    seen = []

    def record(result):
        if session.updates > len(seen):
            seen.append(key_coordinates(bpy.data.objects[SPHERE]).copy())
        return result != {"PASS_THROUGH"}

    assert op.run_until(context, record) == {"FINISHED"}
    assert len(seen) >= 3
    changes = [np.abs(b - a).max() for a, b in zip(seen, seen[1:], strict=False)]
    assert all(change > 0 for change in changes)  # each update moved the mesh
    assert runtime.running_session() is None
    np.testing.assert_array_equal(key_coordinates(sphere, "Basis"), original)
    assert op.reports and op.reports[-1][0] == "INFO"


def test_esc_cancels_and_restores_the_mesh(scene, addon):
    context = bpy.context
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    op = DrivenFit()
    session = op.begin(context)
    op.run_until(context, lambda result: session.updates >= 1)
    assert sphere.data.shape_keys is not None  # the fit was showing
    assert op.tick(context, "ESC") == {"CANCELLED"}
    assert_untouched(bpy.data.objects[SPHERE], original)
    assert session.client._process.poll() is not None  # the backend is gone


def test_cancel_button_stops_the_fit_and_restores_the_mesh(scene, addon):
    from softras_blender import runtime

    context = bpy.context
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    op = DrivenFit()
    session = op.begin(context)
    op.run_until(context, lambda result: session.updates >= 1)
    assert bpy.ops.softras.cancel_fit() == {"FINISHED"}
    assert op.tick(context) == {"CANCELLED"}
    assert_untouched(bpy.data.objects[SPHERE], original)
    assert runtime.running_session() is None
    assert not bpy.ops.softras.cancel_fit.poll()


def test_backend_crash_during_the_fit_is_reported_and_the_mesh_restored(scene, addon):
    context = bpy.context
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    op = DrivenFit()
    session = op.begin(context)
    op.run_until(context, lambda result: session.updates >= 1)
    os.kill(session.client.pid, signal.SIGKILL)
    assert op.run_until(context, lambda result: result != {"PASS_THROUGH"},
                        timeout=30) == {"CANCELLED"}
    level, message = op.reports[-1]
    assert level == "ERROR" and "SIGKILL" in message
    assert_untouched(bpy.data.objects[SPHERE], original)


# -- reading reference images ------------------------------------------------------------


def test_float_images_are_unpremultiplied_and_byte_images_decoded_from_srgb(scene, addon):
    from softras_blender import scene_export

    camera = scene.objects["Camera.00"]
    slot = camera.data.background_images[0]
    png = scene_export.view_for_camera(scene, camera, "BACKGROUND").image
    inside = png[..., 3] == 1.0
    # The 8-bit PNG holds sRGB-encoded values; the target is linear light.
    raw = scene_export.image_pixels(slot.image)[::-1]
    np.testing.assert_allclose(png[inside][:, :3], (((raw[inside][:, :3] + 0.055) / 1.055)
                                                    ** 2.4).clip(0, 1), atol=0.02)
    image = bpy.data.images.new("float", 64, 64, alpha=True, float_buffer=True)
    pixels = np.zeros((64, 64, 4), np.float32)
    pixels[16:48, 16:48] = (0.25, 0.125, 0.0, 0.5)  # premultiplied (0.5, 0.25, 0) at alpha 0.5
    image.pixels.foreach_set(pixels.ravel())
    slot.image = image
    target = scene_export.view_for_camera(scene, camera, "BACKGROUND").image
    np.testing.assert_allclose(target[32, 32], [0.5, 0.25, 0.0, 0.5], atol=1e-6)
    assert target[0, 0, 3] == 0.0


def test_folder_images_equal_the_background_images(scene, addon, scene_file):
    from softras_blender import scene_export

    camera = scene.objects["Camera.04"]
    folder = str(scene_file.parent / "renders")
    from_folder = scene_export.view_for_camera(scene, camera, "FOLDER", folder, resolution=32)
    from_background = scene_export.view_for_camera(scene, camera, "BACKGROUND", resolution=32)
    assert from_folder.image.shape == (32, 32, 4)
    np.testing.assert_array_equal(from_folder.image, from_background.image)
    np.testing.assert_array_equal(from_folder.camera.intrinsics,
                                  from_background.camera.intrinsics)


# -- bad input: a clear error and the mesh as it was ------------------------------------------


def fit_error(**overrides) -> str:
    with pytest.raises(RuntimeError) as info:
        bpy.ops.softras.fit(device="CPU", **overrides)
    return str(info.value)


def test_camera_without_an_image(scene, addon):
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    camera = scene.objects["Camera.03"]
    camera.data.background_images.clear()
    collection = bpy.data.collections.new("rig")
    scene.collection.children.link(collection)
    for obj in scene.objects:
        if obj.type == "CAMERA":
            collection.objects.link(obj)
    scene.softras.camera_source = "COLLECTION"
    scene.softras.camera_collection = collection
    message = fit_error()
    assert "'Camera.03' has no background image" in message
    assert_untouched(sphere, original)


def test_image_of_another_aspect_than_the_render(scene, addon):
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    wide = bpy.data.images.new("wide", 64, 32, alpha=True)
    pixels = np.zeros((32, 64, 4), np.float32)
    pixels[8:24, 24:40] = 1.0
    wide.pixels.foreach_set(pixels.ravel())
    scene.objects["Camera.02"].data.background_images[0].image = wide
    message = fit_error()
    assert "'wide' of camera 'Camera.02'" in message and "aspect" in message
    assert_untouched(sphere, original)


def test_no_mesh_and_no_silhouettes(scene, addon):
    for obj in scene.objects:
        if obj.type == "CAMERA":
            obj.data.background_images.clear()
    scene.softras.mesh_source = "HULL"
    message = fit_error()
    assert "none of the scene's 8 cameras has a background image" in message
    assert not [o for o in bpy.data.objects if o.name.endswith("SoftRas Fit")]


def test_non_mesh_object(scene, addon):
    from softras_blender import runtime

    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    bpy.context.view_layer.objects.active = scene.objects["Camera.00"]
    assert "'Camera.00' is a camera object, not a mesh" in fit_error()
    scene.softras.mesh_source = "OBJECT"
    scene.softras.target_object = scene.objects["Camera.01"]
    assert "'Camera.01' is a camera object, not a mesh" in fit_error()
    assert_untouched(sphere, original)
    assert runtime.last_outcome() is runtime.Outcome.BAD_INPUT


def test_missing_backend_python(scene, addon):
    from softras_blender import runtime

    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    message = fit_error(backend_command="/nonexistent/python3")
    assert "Cannot start the fit" in message and "/nonexistent/python3" in message
    assert_untouched(sphere, original)
    assert runtime.last_outcome() is runtime.Outcome.FAILED


def test_backend_that_crashes_at_start(scene, addon):
    sphere = scene.objects[SPHERE]
    original = coordinates(sphere)
    crash = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    message = fit_error(backend_command=crash)
    assert "Fit failed" in message and "exited with code 3" in message
    assert_untouched(sphere, original)


# -- the sidebar panel and the preferences draw what exists ---------------------------------


class RecordingLayout:
    """Stands in for a UILayout: records what is drawn and checks every property and
    operator named exists (Blender itself only prints a warning for a wrong name)."""

    def __init__(self, log):
        self.log = log

    def _child(self, *args, **kwargs):
        return RecordingLayout(self.log)

    column = row = box = split = _child

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties.keys(), name
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        module, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, module), name), idname
        self.log.append(("operator", idname))

    def label(self, text="", icon="NONE", **kwargs):
        self.log.append(("label", text))

    def progress(self, factor=0.0, type="BAR", text=""):
        self.log.append(("progress", factor, text))

    def separator(self, **kwargs):
        pass


def draw(panel_class, context, **attributes):
    log = []
    panel_class.draw(SimpleNamespace(layout=RecordingLayout(log), **attributes), context)
    return log


def test_panel_shows_the_settings_then_progress_while_fitting(scene, addon):
    from softras_blender import panels, runtime

    scene.softras.mesh_source = "OBJECT"
    scene.softras.camera_source = "COLLECTION"
    scene.softras.image_source = "FOLDER"
    idle = draw(panels.SOFTRAS_PT_fit, bpy.context)
    for name in ("mesh_source", "target_object", "camera_collection", "image_folder"):
        assert ("prop", name) in idle
    assert ("operator", "softras.fit") in idle
    options = draw(panels.SOFTRAS_PT_fit_options, bpy.context)
    assert [entry[1] for entry in options] == ["iterations", "resolution", "sharpness",
                                               "smoothness", "fit_colors", "refine_cameras",
                                               "held_out_every"]
    running = SimpleNamespace(progress=0.5, progress_text="12 / 24", mean_iou=0.75,
                              losses={"silhouette": 0.25},
                              hello={"threads": {"count": 2, "wait_policy": "PASSIVE"}})
    runtime.state.session = running
    try:
        busy = draw(panels.SOFTRAS_PT_fit, bpy.context)
    finally:
        runtime.state.session = None
    assert ("progress", 0.5, "12 / 24") in busy
    assert ("label", "Mean IoU: 0.750") in busy and ("label", "silhouette: 0.25") in busy
    assert ("operator", "softras.cancel_fit") in busy
    assert ("operator", "softras.fit") not in busy
    assert ("label", "CPU threads: 2 (wait policy PASSIVE)") in busy


def test_preferences_show_the_backend_choice_and_its_tools(scene, addon):
    from softras_blender import preferences

    log = draw(preferences.SoftRasPreferences, bpy.context, backend_mode="CUSTOM",
               custom_command="", device="AUTO", threads=0,
               bl_rna=preferences.SoftRasPreferences.bl_rna)
    assert [e[1] for e in log if e[0] == "prop"] == ["backend_mode", "custom_command", "device",
                                                     "threads"]
    assert ("operator", "softras.install_backend") in log
    assert ("operator", "softras.check_backend") in log
    assert any(e[0] == "label" and "command is empty" in e[1] for e in log)


def test_a_successful_fit_is_one_undo_step():
    from softras_blender.operators import SOFTRAS_OT_fit

    # FINISHED pushes one undo step with this flag; CANCELLED pushes none.
    assert {"REGISTER", "UNDO"} <= SOFTRAS_OT_fit.bl_options
