"""backend.core.similarity: projection, triangulation, and where corrected cameras put
the object (the gauge refined cameras keep)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fit_scenes import cameras
from scipy.spatial.transform import Rotation

from backend.core.similarity import (
    Similarity,
    ball_points,
    keep_reconstruction,
    project,
    reconstruction_drift,
    triangulate,
)


def _similarity(degrees=2.0, scale=1.03, translation=(0.05, -0.02, 0.04)) -> Similarity:
    rotation = Rotation.from_rotvec(np.radians(degrees) * np.array([0.3, 0.9, -0.3])
                                    / np.linalg.norm([0.3, 0.9, -0.3])).as_matrix()
    return Similarity(scale, rotation, np.array(translation))


@pytest.mark.parametrize("orthographic", [False, True])
def test_the_projection_derivative_matches_finite_differences(orthographic):
    cam = dataclasses.replace(cameras((64, 48), elevations=(25.0,), azimuths=1)[0],
                              orthographic=orthographic)
    points = ball_points(np.zeros(3), 0.8, count=10)
    _, jacobian = project(cam, points)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1e-6
        numeric = (project(cam, points + step)[0] - project(cam, points - step)[0]) / 2e-6
        np.testing.assert_allclose(jacobian[:, :, axis], numeric, rtol=1e-5, atol=1e-6)


def test_triangulation_recovers_points_from_their_pixels():
    cams = cameras((64, 64), elevations=(-10.0, 30.0), azimuths=4)
    points = ball_points(np.array([0.1, 0.0, -0.1]), 0.7, count=20)
    pixels = np.stack([project(c, points)[0] for c in cams])
    start = points + np.random.default_rng(0).normal(scale=0.05, size=points.shape)
    np.testing.assert_allclose(triangulate(cams, pixels, start), points, atol=1e-8)


def test_cameras_moved_with_the_world_drift_by_that_similarity_and_are_carried_back():
    cams = cameras((64, 64), elevations=(-10.0, 30.0), azimuths=4)
    points = ball_points(np.zeros(3), 0.8)
    moved_world = _similarity()
    moved = [dataclasses.replace(c, world_to_camera=moved_world.camera_pose(c.world_to_camera))
             for c in cams]
    drift = reconstruction_drift(cams, moved, points)
    assert drift.scale == pytest.approx(moved_world.scale, rel=1e-6)
    np.testing.assert_allclose(drift.rotation, moved_world.rotation, atol=1e-6)
    np.testing.assert_allclose(drift.translation, moved_world.translation, atol=1e-6)
    for back, cam in zip(keep_reconstruction(cams, moved, points), cams, strict=True):
        np.testing.assert_allclose(back.world_to_camera, cam.world_to_camera, atol=1e-6)


def test_orthographic_cameras_see_the_scale_so_their_drift_is_rigid():
    cams = [dataclasses.replace(c, orthographic=True)
            for c in cameras((64, 64), elevations=(-10.0, 30.0), azimuths=4)]
    points = ball_points(np.zeros(3), 0.8)
    turned = _similarity(scale=1.0)
    moved = [dataclasses.replace(c, world_to_camera=turned.camera_pose(c.world_to_camera))
             for c in cams]
    drift = reconstruction_drift(cams, moved, points)
    assert drift.scale == 1.0
    np.testing.assert_allclose(drift.rotation, turned.rotation, atol=1e-6)


def test_a_similarity_then_its_inverse_is_the_identity():
    s = _similarity()
    both = s.then(s.inverse())
    points = ball_points(np.ones(3), 2.0, count=8)
    np.testing.assert_allclose(both.apply(points), points, atol=1e-12)


def test_ball_points_fill_a_ball_of_the_radius_asked():
    points = ball_points(np.array([1.0, 2.0, 3.0]), 0.5, count=32)
    distances = np.linalg.norm(points - [1.0, 2.0, 3.0], axis=1)
    assert points.shape == (65, 3)
    assert sorted(set(np.round(distances, 9))) == [0.0, 0.25, 0.5]
    np.testing.assert_allclose(points[1:33].mean(axis=0), [1.0, 2.0, 3.0], atol=0.02)
