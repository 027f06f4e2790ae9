"""The add-on's bpy-free helpers: reference images -> targets, the backend's Python and its
installer, and the panel settings -> FitOptions mapping. No Blender needed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from backend.core.camera import blender_camera, look_at
from backend.core.messages import hello_threads
from backend.core.options import DEVICES
from backend.core.requirements import (
    REQUIREMENTS_FILE,
    backend_requirements,
    distribution_name,
    pyproject_requirements,
    requirement_for,
    requirements_text,
)
from softras_blender import environment, fit_options, silhouettes
from softras_blender.client import default_backend_command

REPO = Path(__file__).resolve().parent.parent


def bottom_up(top_down: np.ndarray) -> np.ndarray:
    """Blender's row order (row 0 at the bottom) for an image given top-down."""
    return np.ascontiguousarray(top_down[::-1])


def disc(width: int, height: int, radius: float) -> np.ndarray:
    """(H, W, 4) top-down RGBA: an opaque disc of a colour gradient on transparency."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    inside = (x - width / 2) ** 2 + (y - height / 2) ** 2 < radius**2
    rgba = np.zeros((height, width, 4), np.float32)
    rgba[..., 0] = x / width
    rgba[..., 1] = y / height
    rgba[..., 2] = 0.25
    rgba[..., 3] = inside
    return rgba


# -- images -> targets ---------------------------------------------------------------------


def test_srgb_decoding_matches_the_standard_curve():
    encoded = np.array([0.0, 0.04045, 0.5, 1.0], np.float32)
    linear = silhouettes.srgb_to_linear(encoded)
    np.testing.assert_allclose(linear, [0.0, 0.04045 / 12.92, 0.21404, 1.0], rtol=1e-4)


def test_float_pixels_are_unpremultiplied_and_byte_pixels_decoded():
    premultiplied = np.array([[[0.125, 0.25, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    straight = silhouettes.decode_pixels(premultiplied, srgb=False, premultiplied=True)
    np.testing.assert_allclose(straight[0, 0], [0.25, 0.5, 0.0, 0.5])
    np.testing.assert_allclose(straight[0, 1], [0.0, 0.0, 0.0, 0.0])
    srgb = np.array([[[0.5, 0.5, 0.5, 0.5]]], np.float32)
    decoded = silhouettes.decode_pixels(srgb, srgb=True, premultiplied=False)
    np.testing.assert_allclose(decoded[0, 0], [0.21404, 0.21404, 0.21404, 0.5], rtol=1e-4)


def test_image_of_render_size_is_copied_exactly_and_flipped_top_down():
    image = disc(40, 30, 9.0)
    target = silhouettes.target_from_pixels(bottom_up(image), (40, 30), srgb=False,
                                            premultiplied=False)
    assert target.shape == (30, 40, 4) and target.dtype == np.float32
    np.testing.assert_allclose(target, image, atol=1e-6)


def test_larger_image_is_area_averaged_to_the_render_size():
    image = disc(80, 60, 18.0)
    target = silhouettes.target_from_pixels(bottom_up(image), (40, 30), srgb=False,
                                            premultiplied=False)
    expected = image.reshape(30, 2, 40, 2, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(target, expected, atol=1e-6)


def test_sample_size_gives_a_downscaled_target_of_the_same_frame():
    image = disc(64, 48, 15.0)
    target = silhouettes.target_from_pixels(bottom_up(image), (64, 48), srgb=False,
                                            premultiplied=False, sample_size=(32, 24))
    expected = image.reshape(24, 2, 32, 2, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(target, expected, atol=1e-6)


def test_flips_mirror_the_image():
    image = disc(20, 10, 3.0)
    image[:, :5, 3] = 1.0  # a left bar, so mirroring shows
    flipped = silhouettes.target_from_pixels(bottom_up(image), (20, 10), srgb=False,
                                             premultiplied=False, flip_x=True, flip_y=True)
    np.testing.assert_allclose(flipped, image[::-1, ::-1], atol=1e-6)


def test_offset_and_scale_follow_blenders_background_image_placement():
    # A 2x scaled image shows its middle half; offset 0.25 (in frame widths for a
    # landscape frame) moves the image right by a quarter of the frame.
    image = disc(40, 20, 4.0)
    zoomed = silhouettes.target_from_pixels(bottom_up(image), (40, 20), srgb=False,
                                            premultiplied=False, scale=2.0)
    assert zoomed[..., 3].sum() == pytest.approx(4 * image[..., 3].sum(), rel=0.1)
    x, _ = silhouettes.frame_sample_points((40, 20), (40, 20), offset=(0.25, 0.0))
    np.testing.assert_allclose(x[:, :, 0], (np.arange(40) + 0.5 - 10.0)[None, :].repeat(20, 0))


def test_crop_fills_the_frame_with_the_images_middle():
    # A 2:1 image in a 1:1 frame with CROP shows the image's middle square.
    image = disc(40, 20, 6.0)
    target = silhouettes.target_from_pixels(bottom_up(image), (20, 20), srgb=False,
                                            premultiplied=False, frame_method="CROP")
    np.testing.assert_allclose(target, image[:, 10:30], atol=1e-6)


def test_stretch_maps_any_aspect_onto_the_frame():
    image = disc(40, 10, 4.0)
    target = silhouettes.target_from_pixels(bottom_up(image), (20, 20), srgb=False,
                                            premultiplied=False, frame_method="STRETCH")
    assert target.shape == (20, 20, 4)
    assert target[..., 3].max() == 1.0


def test_fit_with_another_aspect_is_refused_with_a_clear_reason():
    with pytest.raises(ValueError, match=r"does not cover the whole camera frame.*aspect"):
        silhouettes.target_from_pixels(np.zeros((20, 40, 4), np.float32), (30, 30),
                                       srgb=False, premultiplied=False, name="cam.png")


def test_silhouette_check_rejects_opaque_and_empty_alpha():
    image = disc(20, 20, 5.0)
    silhouettes.check_silhouette(image)
    opaque = image.copy()
    opaque[..., 3] = 1.0
    with pytest.raises(ValueError, match="opaque everywhere"):
        silhouettes.check_silhouette(opaque, "photo.jpg")
    with pytest.raises(ValueError, match="transparent everywhere"):
        silhouettes.check_silhouette(np.zeros((4, 4, 4)), "empty.png")


# -- the backend's Python and the managed environment -----------------------------------


def test_backend_python_modes(tmp_path):
    assert environment.backend_python("AUTO", "", tmp_path, "/blender/python",
                                      blender_has_torch=True) == ["/blender/python"]
    assert environment.backend_python("BLENDER", "", tmp_path, "/b/py",
                                      blender_has_torch=False) == ["/b/py"]
    assert environment.backend_python("CUSTOM", "conda run -n 'soft ras' python", tmp_path,
                                      "/b/py") == ["conda", "run", "-n", "soft ras", "python"]
    with pytest.raises(ValueError, match="Install Backend"):
        environment.backend_python("AUTO", "", tmp_path, "/b/py", blender_has_torch=False)
    managed = environment.venv_python(tmp_path / environment.VENV_FOLDER)
    managed.parent.mkdir(parents=True)
    managed.touch()
    assert environment.backend_python("AUTO", "", tmp_path, "/b/py",
                                      blender_has_torch=False) == [str(managed)]
    with pytest.raises(ValueError, match="command is empty"):
        environment.backend_python("CUSTOM", "  ", tmp_path, "/b/py")


def test_cuda_version_is_read_from_nvidia_smi_output():
    header = "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |"
    assert environment.cuda_version(header) == (12, 4)
    assert environment.cuda_version("command not found") is None
    assert environment.cupy_package((13, 0)) == "cupy-cuda13x"
    with pytest.raises(ValueError, match="no CuPy wheel"):
        environment.cupy_package((9, 2))


def test_requirements_come_from_pyproject_in_a_checkout():
    requirements = backend_requirements(REPO)
    assert requirements == pyproject_requirements(REPO / "pyproject.toml")
    assert any(r.startswith("torch") for r in requirements)


def test_a_built_addon_reads_the_requirements_file_build_py_writes(tmp_path):
    pinned = ["numpy>=1.26,<2", "torch==2.13.0", "scikit-image>=0.22; python_version>'3'"]
    (tmp_path / REQUIREMENTS_FILE).write_text(requirements_text(pinned), encoding="utf-8")
    assert backend_requirements(tmp_path) == pinned
    assert [distribution_name(r) for r in pinned] == ["numpy", "torch", "scikit-image"]
    assert requirement_for("Torch", pinned) == "torch==2.13.0"
    assert requirement_for("scipy", pinned) == "scipy"  # not listed: the bare name
    with pytest.raises(ValueError, match="reinstall the add-on"):
        backend_requirements(tmp_path / "empty")


def test_install_steps_pick_cpu_wheels_without_cuda_and_cupy_with_it(tmp_path):
    requirements = ["numpy>=1.26,<2", "torch==2.13.0", "scikit-image>=0.22"]
    cpu = environment.install_steps("/b/py", tmp_path / "venv", requirements, None)
    assert cpu[0][1] == ["/b/py", "-m", "venv", str(tmp_path / "venv")]
    torch_step = next(argv for label, argv in cpu if "PyTorch" in label)
    assert environment.TORCH_CPU_INDEX in torch_step and "torch==2.13.0" in torch_step
    assert not any("cupy" in " ".join(argv) for _, argv in cpu)
    gpu = environment.install_steps("/b/py", tmp_path / "venv", requirements, (12, 4))
    assert environment.TORCH_CPU_INDEX not in " ".join(a for _, argv in gpu for a in argv)
    assert gpu[-1][1][-1] == "cupy-cuda12x"


def test_step_runner_runs_steps_in_order_and_stops_at_a_failure(tmp_path):
    ok = [("first", [sys.executable, "-c", "print('one')"]),
          ("second", [sys.executable, "-c", "print('two')"])]
    runner = environment.StepRunner(ok, tmp_path / "ok.log")
    assert runner.run_to_end(interval=0.01) == 0
    log = (tmp_path / "ok.log").read_text()
    assert log.index("one") < log.index("two") and runner.progress == 1.0
    failing = [("boom", [sys.executable, "-c", "import sys; print('bad'); sys.exit(4)"]),
               ("never", [sys.executable, "-c", "print('never')"])]
    runner = environment.StepRunner(failing, tmp_path / "bad.log")
    assert runner.run_to_end(interval=0.01) == 4
    assert runner.label == "boom" and "never" not in (tmp_path / "bad.log").read_text()
    assert any("failed with exit code 4" in line for line in runner.log_tail())


# -- the salient-object model the installer downloads --------------------------------------


@pytest.fixture
def tiny_model(tmp_path) -> tuple[Path, str, int]:
    """A tiny ONNX salient-object model built here, as (file, SHA-256, size): a stand-in
    for u2netp.onnx, served through a file:// URL (GitHub is out of reach in tests)."""
    import hashlib

    from test_segment import redness_model

    path = tmp_path / "served" / "u2netp.onnx"
    path.parent.mkdir()
    redness_model(path)
    data = path.read_bytes()
    return path, hashlib.sha256(data).hexdigest(), len(data)


def test_model_download_checks_the_pinned_checksum_and_keeps_no_partial_file(tmp_path,
                                                                              tiny_model):
    from backend.segment.learned import SalientObjectModel
    from softras_blender import model_download

    served, sha256, size = tiny_model
    user = tmp_path / "user"
    target = model_download.model_path(user)
    assert model_download.installed_model(user) is None
    with pytest.raises(model_download.DownloadError, match="does not match its pinned checksum"):
        model_download.download(served.as_uri(), target, "0" * 64, size)
    assert list(target.parent.iterdir()) == []  # no partial file, no model
    with pytest.raises(model_download.DownloadError, match=f"expected {size + 1}"):
        model_download.download(served.as_uri(), target, sha256, size + 1)
    with pytest.raises(model_download.DownloadError, match="could not download"):
        model_download.download((tmp_path / "absent.onnx").as_uri(), target, sha256, size)
    assert model_download.installed_model(user) is None
    assert model_download.download(served.as_uri(), target, sha256, size) == target
    assert model_download.installed_model(user) == target
    assert target.read_bytes() == served.read_bytes()
    assert SalientObjectModel(target).size == (64, 64)  # the file the backend loads
    # A later download that fails leaves the good model as it was.
    with pytest.raises(model_download.DownloadError):
        model_download.download(served.as_uri(), target, "f" * 64, size)
    assert target.read_bytes() == served.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["u2netp.onnx"]


def test_the_installer_downloads_the_model_in_its_own_process(tmp_path, tiny_model):
    from softras_blender import model_download

    served, sha256, size = tiny_model
    label, argv = environment.model_step("/b/py", tmp_path / "user")
    assert label == "Download the salient-object model (u2netp.onnx)"
    assert argv[2:] == [model_download.MODEL_URL, model_download.MODEL_SHA256,
                        str(model_download.MODEL_SIZE),
                        str(model_download.model_path(tmp_path / "user"))]
    assert len(model_download.MODEL_SHA256) == 64 and model_download.MODEL_SIZE > 4_000_000

    bad = environment.StepRunner([environment.model_step(
        sys.executable, tmp_path / "user", served.as_uri(), "0" * 64, size)], tmp_path / "a.log")
    assert bad.run_to_end(interval=0.01) == 1
    assert "does not match its pinned checksum" in (tmp_path / "a.log").read_text()
    assert model_download.installed_model(tmp_path / "user") is None
    good = environment.StepRunner([environment.model_step(
        sys.executable, tmp_path / "user", served.as_uri(), sha256, size)], tmp_path / "b.log")
    assert good.run_to_end(interval=0.01) == 0
    assert model_download.installed_model(tmp_path / "user").read_bytes() == served.read_bytes()


# -- the backend's launch and what it reports ---------------------------------------------


def test_backend_command_passes_the_cpu_threads():
    assert default_backend_command("py") == ["py", "-m", "backend", "serve"]
    assert default_backend_command(["ssh", "box", "py"], threads=0)[-2:] == ["--threads", "0"]
    assert default_backend_command("py", threads=3)[-2:] == ["--threads", "3"]
    with pytest.raises(ValueError, match="threads must be >= 0"):
        default_backend_command("py", threads=-1)


def test_the_threads_a_backend_chose_are_read_from_its_hello_if_it_says():
    chosen = {"threads": {"count": 2, "wait_policy": "PASSIVE"}}
    assert hello_threads(chosen) == (2, "PASSIVE")
    assert hello_threads({"device": "cpu"}) is None  # an older backend
    assert hello_threads({"threads": {"count": "2"}}) is None


# -- settings -> FitOptions --------------------------------------------------------------


def test_device_choices_are_the_backends_devices():
    assert [item[0] for item in fit_options.DEVICE_ITEMS] == [d.upper() for d in DEVICES]
    with pytest.raises(ValueError, match="device must be one of"):
        fit_options.options_from_settings({}, "tpu")


def test_backend_defaults_are_the_backends_fit_options():
    fitting = pytest.importorskip("backend.fit.fitting")
    defaults = fit_options.backend_defaults()
    assert fitting.FitOptions.from_dict(defaults) == fitting.FitOptions()


def test_settings_map_to_valid_fit_options():
    fitting = pytest.importorskip("backend.fit.fitting")
    defaults = fitting.FitOptions()
    settings = {"iterations": 90, "sharpness": "SHARP", "fit_colors": True, "smoothness": 2.0}
    options = fit_options.options_from_settings(settings, "CUDA")
    parsed = fitting.FitOptions.from_dict(options)  # the backend accepts every key
    assert parsed.iterations == 90 and parsed.device == "cuda" and parsed.fit_colors
    assert parsed.laplacian_weight == 2 * defaults.laplacian_weight
    assert defaults.unseen_weight > 0
    assert parsed.unseen_weight == pytest.approx(2 * defaults.unseen_weight)
    sharp = fit_options.SHARPNESS_PRESETS["SHARP"]
    assert parsed.sigma_end == pytest.approx(sharp.end_factor * defaults.sigma_end)
    medium = fit_options.options_from_settings({**settings, "sharpness": "MEDIUM",
                                                "smoothness": 1.0}, "AUTO")
    assert not {"sigma_start", "sigma_end", "laplacian_weight"} & set(medium)
    with pytest.raises(ValueError, match="sharpness"):
        fit_options.options_from_settings({**settings, "sharpness": "FUZZY"}, "CPU")


def test_starts_without_a_mesh_and_alignment_map_to_fit_options():
    fitting = pytest.importorskip("backend.fit.fitting")
    settings = {"iterations": 50, "sharpness": "MEDIUM", "fit_colors": False,
                "smoothness": 1.0, "align_mesh": True}
    sphere = fit_options.options_from_settings({**settings, "start": "SPHERE"}, "CPU")
    hull = fit_options.options_from_settings({**settings, "start": "HULL"}, "CPU")
    given = fit_options.options_from_settings({**settings, "start": "ACTIVE"}, "CPU")
    assert fitting.FitOptions.from_dict(sphere).init == "sphere"
    assert fitting.FitOptions.from_dict(hull).init == "hull"
    assert "align_initial" not in sphere  # nothing to align without a mesh
    assert fitting.FitOptions.from_dict(given).align_initial


def test_fit_size_keeps_the_aspect():
    assert fit_options.fit_size(1920, 1080, 256) == (256, 144)
    assert fit_options.fit_size(64, 48, 0) == (64, 48)
    assert fit_options.fit_size(64, 48, 128) == (64, 48)


def test_resized_camera_equals_blenders_camera_at_the_lower_resolution():
    world = look_at((3.0, -4.0, 2.0), (0.0, 0.0, 0.3))
    full = blender_camera(matrix_world=world, resolution_x=1920, resolution_y=1080,
                          lens=35.0, shift_x=0.1, shift_y=-0.05)
    small = blender_camera(matrix_world=world, resolution_x=1920, resolution_y=1080,
                           resolution_percentage=25, lens=35.0, shift_x=0.1, shift_y=-0.05)
    scaled = full.resized(small.width, small.height)
    np.testing.assert_allclose(scaled.intrinsics, small.intrinsics, rtol=1e-12)
    np.testing.assert_allclose(scaled.world_to_camera, small.world_to_camera)
