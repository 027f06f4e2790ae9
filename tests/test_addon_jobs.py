"""The add-on's backend jobs in bpy, without running the backend: one job at a time (a fit
refuses to start while a camera solve runs, and the other way round), the launch options
the operators share, and where silhouettes "Learned" finds its model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

bpy = pytest.importorskip("bpy")

pytestmark = pytest.mark.blender


@pytest.fixture
def scene(addon):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def scene_state(scene) -> tuple:
    """What a refused operator must not change."""
    return (sorted(o.name for o in bpy.data.objects), sorted(c.name for c in bpy.data.collections),
            len(bpy.data.meshes), scene.softras.camera_source)


@pytest.mark.parametrize("running, refused, reason", [
    ("solve", "fit", "A camera solve is running: wait for it to end or cancel it"),
    ("session", "solve_cameras", "A fit is running: wait for it to end or cancel it"),
    ("preview", "fit", "A silhouette preview is running"),
    ("session", "fit", "A fit is running"),
])
def test_one_backend_job_at_a_time(scene, tmp_path, running, refused, reason):
    from softras_blender import runtime

    bpy.ops.mesh.primitive_cube_add()
    scene.softras.solve_folder = str(tmp_path)
    before = scene_state(scene)
    operator = getattr(bpy.ops.softras, refused)
    assert operator.poll()
    setattr(runtime.state, running, SimpleNamespace())  # a job in flight
    try:
        assert not operator.poll()
        with pytest.raises(RuntimeError, match=reason):
            operator()
    finally:
        setattr(runtime.state, running, None)
    assert scene_state(scene) == before
    assert operator.poll()


def test_the_fit_and_the_solve_share_their_launch_options(addon):
    """Blender registers the properties the operators inherit from `modal.BackendOptions`."""
    for operator in (bpy.ops.softras.fit, bpy.ops.softras.solve_cameras):
        properties = operator.get_rna_type().properties
        assert properties["backend_command"].default == ""
        assert properties["threads"].default == -1 and properties["threads"].hard_min == -1
        assert properties["threads"].is_hidden and properties["backend_command"].is_skip_save


def test_learned_uses_the_named_model_else_the_installed_one(scene, tmp_path):
    from softras_blender import model_download, runtime
    from softras_blender.scene_export import ExportError, silhouette_request

    settings = scene.softras
    settings.silhouettes = "LEARNED"
    installed = model_download.model_path(runtime.user_dir())
    assert not installed.exists()
    with pytest.raises(ExportError) as caught:
        silhouette_request(settings)
    message = str(caught.value)
    assert "none is installed" in message and "Install Backend" in message
    assert "online access" in message and "name a model file" in message
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_bytes(b"stands in for u2netp.onnx")
    try:
        assert silhouette_request(settings)["model"] == str(installed)
        named = tmp_path / "mine.onnx"
        settings.model_path = str(named)
        assert silhouette_request(settings)["model"] == str(named)
        settings.silhouettes = "KEY"
        assert silhouette_request(settings)["model"] is None
    finally:
        installed.unlink()


def test_installing_offline_says_how_to_name_a_model_file(addon):
    system = bpy.context.preferences.system
    was = system.use_online_access
    system.use_online_access = False
    try:
        assert not bpy.app.online_access
        with pytest.raises(RuntimeError, match="work offline") as caught:
            bpy.ops.softras.install_backend()
    finally:
        system.use_online_access = was
    assert "name a U2-Net-class ONNX file" in str(caught.value)


class FakeJob:
    """A backend job that ends after ``steps`` looks, or raises ``error`` at the first."""

    def __init__(self, steps: int = 3, error: Exception | None = None):
        self.steps, self.error, self.closed = steps, error, False

    def step(self) -> bool:
        if self.error is not None:
            raise self.error
        self.steps -= 1
        return self.steps <= 0

    def close(self) -> None:
        self.closed = True


def driven_preview(job):
    """The preview operator's own methods on a stand-in instance with ``job`` running (a
    background Blender has no window for a real modal operator)."""
    from softras_blender import runtime
    from softras_blender.preview import SOFTRAS_OT_preview_silhouettes as op

    reports = []
    driven = SimpleNamespace(_job=job, _timer=None, report=lambda level, text: reports.append(
        text))
    for name in ("modal", "_cancel", "_fail", "_cancel_asked", "_show_progress",
                 "_stop_timer", "_report_failure"):
        setattr(driven, name, getattr(op, name).__get__(driven))
    runtime.state.preview = job
    return driven, reports


def test_esc_cancels_a_running_preview_and_a_failing_step_is_reported(addon):
    from softras_blender import runtime

    timer, esc = SimpleNamespace(type="TIMER"), SimpleNamespace(type="ESC")
    job = FakeJob(steps=5)
    driven, reports = driven_preview(job)
    assert driven.modal(bpy.context, timer) == {"PASS_THROUGH"} and not job.closed
    assert driven.modal(bpy.context, esc) == {"CANCELLED"}
    assert job.closed and runtime.state.preview is None
    assert runtime.preview_status() == ["Preview cancelled"] == reports
    job = FakeJob(error=RuntimeError("the backend died\nits log"))
    driven, reports = driven_preview(job)
    assert driven.modal(bpy.context, timer) == {"CANCELLED"}
    assert job.closed and runtime.state.preview is None
    assert runtime.preview_status() == ["Preview failed: the backend died"]
    assert reports == ["Preview failed: the backend died\nits log"]
