"""Structure from motion (backend.sfm): the alignment maths, the scene normalisation, the
error messages and cancelling, and one end-to-end solve of Cycles renders."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos

from backend.core.camera import (
    blender_camera,
    camera_centres,
    look_at,
    orbit_cameras,
    world_to_camera,
)
from backend.core.camera_files import read_colmap
from backend.sfm import (
    SfmError,
    Similarity,
    SolveCancelled,
    SolvedCamera,
    SolveResult,
    list_photos,
    normalise_scene,
    pose_errors,
    solve_cameras,
    umeyama,
    write_colmap_model,
)


def random_similarity(rng) -> Similarity:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return Similarity(float(rng.uniform(0.2, 5.0)), q, rng.normal(size=3))


# --- alignment -----------------------------------------------------------------------


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    truth = random_similarity(rng)
    source = rng.normal(size=(12, 3))
    found = umeyama(source, truth.apply(source))
    assert found.scale == pytest.approx(truth.scale, rel=1e-10)
    np.testing.assert_allclose(found.rotation, truth.rotation, atol=1e-10)
    np.testing.assert_allclose(found.translation, truth.translation, atol=1e-10)


def test_umeyama_rigid_keeps_unit_scale_and_never_reflects():
    rng = np.random.default_rng(2)
    source = rng.normal(size=(8, 3))
    mirrored = source * np.array([-1.0, 1.0, 1.0])  # the best fit would be a reflection
    found = umeyama(source, mirrored, with_scale=False)
    assert found.scale == 1.0
    assert np.linalg.det(found.rotation) == pytest.approx(1.0)


def test_umeyama_refuses_degenerate_points():
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one line"):
        umeyama(line, line)


def test_a_moved_camera_sees_moved_points_at_the_same_pixels():
    rng = np.random.default_rng(3)
    similarity = random_similarity(rng)
    pose = look_at_pose(np.array([3.0, -2.0, 1.0]))
    points = rng.normal(scale=0.5, size=(10, 3))
    moved_pose = similarity.camera_pose(pose)
    before = points @ pose[:3, :3].T + pose[:3, 3]
    after = similarity.apply(points) @ moved_pose[:3, :3].T + moved_pose[:3, 3]
    np.testing.assert_allclose(after[:, :2] / after[:, 2:], before[:, :2] / before[:, 2:],
                               atol=1e-10)


def test_pose_errors_are_zero_up_to_a_similarity_and_see_a_turned_camera():
    rng = np.random.default_rng(4)
    truth = np.stack([look_at_pose(c) for c in rng.normal(scale=3.0, size=(6, 3))])
    similarity = random_similarity(rng)
    solved = np.stack([similarity.camera_pose(p) for p in truth])
    errors = pose_errors(solved, truth)
    assert errors.rotation_deg.max() < 1e-6 and errors.centre.max() < 1e-9
    turn, centre = np.radians(1.0), camera_centres(solved[2:3])[0]
    solved[2, :3, :3] = np.array([[np.cos(turn), -np.sin(turn), 0],
                                  [np.sin(turn), np.cos(turn), 0], [0, 0, 1]]) @ solved[2, :3, :3]
    solved[2, :3, 3] = -solved[2, :3, :3] @ centre  # turned about its own centre
    errors = pose_errors(solved, truth)
    assert errors.rotation_deg[2] == pytest.approx(1.0, abs=1e-6)
    assert np.delete(errors.rotation_deg, 2).max() < 1e-6


def look_at_pose(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """World -> camera (4, 4), OpenCV axes, of a camera at ``eye`` looking at ``target``."""
    return world_to_camera(look_at(eye, target))


# --- normalisation ---------------------------------------------------------------------

TARGET = np.array([0.3, -0.2, 0.1])
SUBJECT_RADIUS = 0.7


def ring_result(similarity: Similarity | None = None, elevations=(15.0, 40.0),
                distance=4.0) -> SolveResult:
    """Cameras on rings around TARGET (Z up) and points on a sphere of SUBJECT_RADIUS
    around it, optionally moved by ``similarity`` (a solve's arbitrary frame)."""
    similarity = similarity or Similarity.identity()
    cameras = []
    worlds = orbit_cameras(8, elevations, distance, target=TARGET, azimuth_offset_deg=-70.0)
    for i, world in enumerate(worlds):
        cam = blender_camera(matrix_world=world, resolution_x=320, resolution_y=240, lens=35)
        moved = similarity.camera_pose(cam.world_to_camera)
        cameras.append(SolvedCamera(f"v{i}", f"v{i}.png",
                                    type(cam)(cam.intrinsics, moved, 320, 240, False),
                                    "SIMPLE_PINHOLE", 100))
    rng = np.random.default_rng(5)
    directions = rng.normal(size=(400, 3))
    points = TARGET + SUBJECT_RADIUS * directions / np.linalg.norm(directions, axis=1)[:, None]
    return SolveResult(Path("."), tuple(cameras), (), similarity.apply(points),
                       {"features": 0.0}, "exhaustive")


def centres_of(result: SolveResult) -> np.ndarray:
    return camera_centres(np.stack([c.camera.world_to_camera for c in result.cameras]))


def test_normalise_puts_the_ring_level_the_subject_at_unit_radius_and_camera_0_in_front():
    truth = ring_result()
    solved = ring_result(random_similarity(np.random.default_rng(6)))
    result = normalise_scene(solved)
    centres, expected = centres_of(result), (centres_of(truth) - TARGET) / SUBJECT_RADIUS
    np.testing.assert_allclose(centres[:, 2], expected[:, 2], atol=1e-6)  # Z up, same heights
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1),
                               np.linalg.norm(expected, axis=1), rtol=1e-6)
    assert abs(centres[0, 0]) < 1e-6 and centres[0, 1] < 0  # on -Y, looking along +Y
    assert np.percentile(np.linalg.norm(result.points, axis=1), 90) == pytest.approx(1.0)
    errors = pose_errors(np.stack([c.camera.world_to_camera for c in result.cameras]),
                         np.stack([c.camera.world_to_camera for c in truth.cameras]))
    assert errors.rotation_deg.max() < 1e-6
    assert result.frame["up"] == "the camera ring's plane normal"


def test_normalise_scales_to_a_known_camera_distance():
    result = normalise_scene(ring_result(random_similarity(np.random.default_rng(7))),
                             known_distance=1.5)
    assert np.median(np.linalg.norm(centres_of(result), axis=1)) == pytest.approx(1.5)


@pytest.mark.parametrize("up", ["camera", "given"])
def test_normalise_takes_up_from_the_photos_or_the_caller(up):
    similarity = random_similarity(np.random.default_rng(8))
    solved = ring_result(similarity)
    vector = similarity.rotation @ np.array([0.0, 0.0, 1.0])
    result = normalise_scene(solved, up="camera" if up == "camera" else vector)
    heights = centres_of(result)[:, 2]
    expected = (centres_of(ring_result())[:, 2] - TARGET[2]) / SUBJECT_RADIUS
    np.testing.assert_allclose(heights, expected, atol=1e-6)


def test_normalise_refuses_a_ring_that_is_not_a_plane():
    line = ring_result()
    cams = tuple(c for i, c in enumerate(line.cameras) if i in (0, 8))  # one azimuth, 2 heights
    flat = SolveResult(line.image_dir, cams + cams[:1], (), line.points, {}, "exhaustive")
    with pytest.raises(SfmError, match="up='camera'"):
        normalise_scene(flat, up="ring")
    with pytest.raises(ValueError, match="up must be"):
        normalise_scene(line, up="sideways")


def test_written_colmap_model_reads_back(tmp_path):
    result = normalise_scene(ring_result())
    write_colmap_model(result, tmp_path / "sparse")
    records = read_colmap(tmp_path / "sparse")
    by_image = {record.image: record for record in records}
    assert sorted(by_image) == sorted(result.registered)
    for camera in result.cameras:
        record = by_image[camera.image]
        np.testing.assert_allclose(record.camera.world_to_camera, camera.camera.world_to_camera,
                                   atol=1e-9)
        np.testing.assert_allclose(record.camera.intrinsics, camera.camera.intrinsics)


# --- errors and cancelling --------------------------------------------------------------

needs_pycolmap = pytest.mark.skipif(importlib.util.find_spec("pycolmap") is None,
                                    reason="pycolmap is not installed (the backend extra)")


def test_too_few_photos_and_a_missing_folder_are_refused(tmp_path):
    with pytest.raises(SfmError, match="at least 3"):
        solve_cameras(write_photos(tmp_path / "two", ["noise", "noise"]))
    with pytest.raises(SfmError, match="not a folder"):
        solve_cameras(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="ordering"):
        solve_cameras(tmp_path / "two", ordering="random")


def test_photos_are_listed_in_natural_order_from_a_folder_or_a_list(tmp_path):
    folder = write_photos(tmp_path / "p", ["plain"] * 3)
    for old, new in (("photo_0", "view_10"), ("photo_1", "view_2"), ("photo_2", "view_1")):
        (folder / f"{old}.png").rename(folder / f"{new}.png")
    (folder / "notes.txt").write_text("not a photo")
    assert list_photos(folder) == (folder, ["view_1.png", "view_2.png", "view_10.png"])
    files = [folder / "view_2.png", folder / "view_10.png", folder / "view_1.png"]
    assert list_photos(files)[1] == ["view_1.png", "view_2.png", "view_10.png"]
    with pytest.raises(SfmError, match="do not exist"):
        list_photos([folder / "view_1.png", folder / "missing.png"])


@needs_pycolmap
def test_missing_pycolmap_names_the_pip_command(tmp_path, monkeypatch):
    import importlib.util

    from backend.sfm import solve

    real = importlib.util.find_spec
    monkeypatch.setattr(solve.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pycolmap" else real(name, *a))
    with pytest.raises(SfmError, match=r"pip install 'pycolmap==3\.13\.0'"):
        solve_cameras(write_photos(tmp_path / "p", ["noise"] * 3))


@needs_pycolmap
def test_photos_that_do_not_register_are_listed_with_reasons(tmp_path):
    folder = write_photos(tmp_path / "p", ["noise", "noise", "plain"])
    with pytest.raises(SfmError) as caught:
        solve_cameras(folder, num_threads=1)
    message = str(caught.value)
    assert "none of the 3 photos could be placed" in message
    assert "photo_0.png: no other photo shares enough features" in message
    assert "photo_2.png: only 0 SIFT features" in message


@needs_pycolmap
def test_cancel_stops_the_solve_promptly(tmp_path):
    folder = write_photos(tmp_path / "p", ["noise"] * 6, size=(640, 480))
    asked = []

    def should_cancel() -> bool:
        if not asked and progress:  # cancel once the first stage reports
            asked.append(time.perf_counter())
        return bool(asked)

    progress = []
    with pytest.raises(SolveCancelled) as caught:
        solve_cameras(folder, should_cancel=should_cancel,
                      on_progress=lambda *a: progress.append(a), num_threads=1)
    assert time.perf_counter() - asked[0] < 2.0
    assert caught.value.stage == "features"
    assert "cancelled during features" in str(caught.value)



# --- end to end ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.blender
@needs_pycolmap
def test_solve_recovers_the_cameras_of_cycles_renders(tmp_path):
    """Spot on textured hills from 3 rings of 8 cameras at 320x240 (devtools/sfm_scene.py):
    every photo registers and the poses match the truth after a similarity. (At 320x240
    the worst errors were 0.21 degrees and 0.39% of the radius; 2 rings left 5 photos
    out.)"""
    pytest.importorskip("bpy")
    from devtools.sfm_scene import render_views

    truth = render_views(tmp_path, azimuths=8, elevations=(20.0, 35.0, 50.0), width=320,
                         height=240, distance=3.5, samples=8)
    stages_seen = set()
    result = solve_cameras(tmp_path / "images", normalise=False,
                           on_progress=lambda stage, *_: stages_seen.add(stage))
    assert stages_seen == {"features", "matching", "mapping"}
    assert result.registered == [record.image for record in truth]
    assert result.unregistered == ()
    errors = pose_errors(np.stack([c.camera.world_to_camera for c in result.cameras]),
                         np.stack([r.camera.world_to_camera for r in truth]))
    assert errors.rotation_deg.max() < 0.5
    assert errors.centre.max() < 0.01 * 3.5  # the ring's radius (render_views' distance)
