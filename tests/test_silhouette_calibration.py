"""Cameras from silhouettes alone (backend.fit.silhouette_calibration): contours, epipolar
tangents, residuals and their Jacobian, the solve, and its place in a refined fit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import has_cuda
from fit_scenes import box, cameras, sphere
from scipy.spatial.transform import Rotation

from backend.core.camera import CameraMatrices
from backend.core.similarity import reconstruction_drift
from backend.fit import silhouette_calibration as sc
from backend.fit.camera_refine import apply_to_pose, miscalibrated
from backend.fit.fitting import FitError, FitOptions, View, fit
from backend.fit.inputs import prepare_views
from backend.render.renderer import Cameras, RenderSettings, project_points, render_silhouette


def _disc(radius=20.0, center=(40.3, 31.7), size=(80, 64), supersample=8) -> np.ndarray:
    """(H, W) alpha of a disc, anti-aliased by ``supersample``^2 samples per pixel."""
    h, w = size[1] * supersample, size[0] * supersample
    y, x = (np.mgrid[0:h, 0:w] + 0.5) / supersample
    inside = (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius ** 2
    return inside.reshape(size[1], supersample, size[0], supersample).mean(axis=(1, 3))


def test_the_contour_hull_follows_the_silhouette_to_a_small_fraction_of_a_pixel():
    hull = sc.contour_hull(_disc())
    radii = np.linalg.norm(hull - np.array([40.3, 31.7]), axis=1)
    # linear interpolation across an oblique anti-aliased edge is off by up to ~0.13 px
    assert np.abs(radii - 20.0).max() < 0.15 and abs(radii.mean() - 20.0) < 0.05
    x, y = hull[:, 0], hull[:, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # counter-clockwise


def test_a_cut_off_or_empty_silhouette_has_no_hull():
    assert sc.contour_hull(_disc(center=(10.0, 31.7))) is None  # crosses the left border
    assert sc.contour_hull(np.zeros((20, 20))) is None


def test_the_tangents_from_a_point_touch_the_hull_on_both_sides():
    angles = np.radians(30.0 + 60.0 * np.arange(6))
    hexagon = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    # from (5, 0) the lines touch the top (90 degrees) and bottom (270 degrees) corners
    assert sc.tangent_indices(hexagon, np.array([5.0, 0.0, 1.0])) == (1, 4)
    assert sc.tangent_indices(hexagon, np.array([0.1, 0.2, 1.0])) is None  # inside
    # a point at infinity: the lines of its direction (here 45 degrees) that touch the
    # corners at 150 and 330 degrees
    assert sc.tangent_indices(hexagon, np.array([1.0, 1.0, 0.0])) == (2, 5)


def _object():
    """A lumpy object with no symmetry: an ellipsoid and a box stuck to it, turned."""
    v1, f1 = sphere(level=3)
    v1 = v1 * np.array([0.9, 0.6, 0.45])
    v2, f2 = box((0.25, 0.2, 0.3), center=(0.55, 0.3, 0.25))
    v = np.concatenate([v1, v2])
    f = np.concatenate([f1, f2 + len(v1)])
    angle = np.radians(25.0)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                     [0, 0, 1]])
    return v @ turn.T, f


def _alphas(vertices, faces, cams, supersample=4) -> list[np.ndarray]:
    """Anti-aliased silhouettes (H, W): rendered ``supersample`` times finer, averaged."""
    out = []
    for cam in cams:
        fine = cam.resized(cam.width * supersample, cam.height * supersample)
        with torch.no_grad():
            alpha = render_silhouette(torch.tensor(vertices), torch.tensor(faces),
                                      Cameras.from_matrices([fine], dtype=torch.float64),
                                      RenderSettings(sigma=1e-4))[0].numpy()
        hard = (alpha > 0.5).astype(np.float64)
        out.append(hard.reshape(cam.height, supersample, cam.width, supersample).mean((1, 3)))
    return out


@pytest.fixture(scope="module")
def rig():
    """(vertices, faces, 16 true cameras at 96 px, their silhouettes)."""
    v, f = _object()
    cams = cameras((96, 96), elevations=(-20.0, 30.0), azimuths=8, distance=4.0)
    return v, f, cams, _alphas(v, f, cams)


def _vertex_error_px(vertices, cams, truth) -> float:
    """Mean distance (px) between ``vertices`` seen by ``cams`` and by ``truth``."""
    pts = torch.tensor(vertices)
    out = [float((project_points(pts, Cameras.from_matrices([a], dtype=torch.float64))
                  - project_points(pts, Cameras.from_matrices([b], dtype=torch.float64)))
                 [0, :, :2].norm(dim=1).mean()) for a, b in zip(cams, truth, strict=True)]
    return float(np.mean(out))


def _moved(cams: list[CameraMatrices], corrections: np.ndarray) -> list[CameraMatrices]:
    return [dataclasses.replace(c, world_to_camera=c.world_to_camera @ d)
            for c, d in zip(cams, corrections, strict=True)]


def test_the_residuals_vanish_for_exact_cameras_and_the_jacobian_is_their_derivative(rig):
    _, _, cams, alphas = rig
    hulls = [sc.contour_hull(a) for a in alphas]
    solver = sc._Rig.of(cams)
    raw = np.random.default_rng(0).normal(scale=0.01, size=(len(cams), 6))
    views = solver.corrected(np.zeros_like(raw))
    tangencies = sc.select_tangencies(hulls, views)
    # most of the 120 pairs see each other's centre outside the silhouette
    assert len(tangencies.src) > 4 * 60
    exact = sc.tangency_residuals(views, views, tangencies)
    # contour sampling error only (16 coverage levels per pixel here)
    assert np.sqrt(np.mean(exact ** 2)) < 0.25 and np.median(np.abs(exact)) < 0.1
    jac = sc.tangency_jacobian(solver, raw, tangencies).toarray()
    for view, param in ((3, 0), (3, 4), (11, 2), (11, 5)):
        step = np.zeros_like(raw)
        step[view, param] = 1e-6
        at = [solver.corrected(raw + s * step) for s in (1, -1)]
        numeric = (sc.tangency_residuals(at[0], at[0], tangencies)
                   - sc.tangency_residuals(at[1], at[1], tangencies)) / 2e-6
        np.testing.assert_allclose(jac[:, 6 * view + param], numeric, atol=1e-4 * np.abs(
            numeric).max())


def test_the_solve_undoes_most_of_a_miscalibration_and_leaves_exact_cameras_alone(rig):
    v, _, true, alphas = rig
    moved = miscalibrated(true, v, 1.5, 0.02, np.random.default_rng(2))
    found = sc.calibrate(moved, alphas)
    before, after = (_vertex_error_px(v, cams, true)
                     for cams in (moved, _moved(moved, found.corrections)))
    print(f"vertex error {before:.2f} -> {after:.2f} px, RMS {found.rms_before:.2f} -> "
          f"{found.rms_after:.3f} px")
    assert found.rms_before > 2.0 and found.rms_after < 0.1
    assert after < 0.25 * before
    # the corrections keep the object where the given cameras put it (the gauge), as
    # judged by a ball standing for it; by the object's own points, to 0.19 degrees
    drift = reconstruction_drift(moved, _moved(moved, found.corrections), v)
    turn = np.degrees(np.linalg.norm(Rotation.from_matrix(drift.rotation).as_rotvec()))
    print(f"drift {turn:.4f} deg, scale {drift.scale:.5f}, "
          f"{np.linalg.norm(drift.translation):.5f} units")
    assert turn < 0.3 and abs(drift.scale - 1.0) < 1e-3
    assert np.linalg.norm(drift.translation) < 1e-3 * np.ptp(v, axis=0).max()
    kept = sc.calibrate(true, alphas)
    # contour noise moves them a little (which is why `pre_calibrate` leaves cameras whose
    # tangencies already agree as they are)
    assert _vertex_error_px(v, _moved(true, kept.corrections), true) < 0.3


def _views(cams, alphas, held_out=()) -> list[View]:
    return [View(c, np.dstack([np.ones(a.shape + (3,)), a]).astype(np.float32),
                 name=f"view {i}", held_out=i in held_out)
            for i, (c, a) in enumerate(zip(cams, alphas, strict=True))]


def test_before_the_fit_only_cameras_that_disagree_are_corrected(rig):
    v, _, true, alphas = rig
    options = FitOptions(refine_cameras=True)
    assert sc.pre_calibrate(prepare_views(_views(true, alphas)), FitOptions()) is None
    assert sc.pre_calibrate(prepare_views(_views(true, alphas)), dataclasses.replace(
        options, refine_tangents=False)) is None
    agree = sc.pre_calibrate(prepare_views(_views(true, alphas)), options)
    assert agree.world == {} and "agree" in agree.message
    moved = miscalibrated(true, v, 1.5, 0.02, np.random.default_rng(2))
    solved = sc.pre_calibrate(prepare_views(_views(moved, alphas, held_out=(5,))), options)
    assert sorted(solved.world) == [i for i in range(16) if i != 5]
    assert "epipolar tangents" in solved.message
    fixed = [solved.prep.views[i].camera for i in range(16)]
    assert fixed[5] is moved[5]  # held out: never corrected
    train = [i for i in range(16) if i != 5]
    assert (_vertex_error_px(v, [fixed[i] for i in train], [true[i] for i in train])
            < 0.25 * _vertex_error_px(v, [moved[i] for i in train], [true[i] for i in train]))
    cut = [np.pad(a[:, 40:], ((0, 0), (0, 40))) for a in alphas]  # all cut at the left
    none = sc.pre_calibrate(prepare_views(_views(moved, cut)), options)
    assert none.world == {} and "only 0 silhouettes" in none.message
    ortho = [dataclasses.replace(c, orthographic=True) for c in moved]
    skipped = sc.pre_calibrate(prepare_views(_views(ortho, alphas)), options)
    assert skipped.world == {} and "orthographic" in skipped.message
    pose = true[0].world_to_camera
    sideways = [dataclasses.replace(true[0], world_to_camera=pose @ _translation(
        0.2 * i * pose[0, :3])) for i in range(6)]  # a slide: every axis parallel
    parallel = sc.pre_calibrate(prepare_views(_views(sideways, alphas[:6])), options)
    assert parallel.world == {} and "the same way" in parallel.message


def _translation(offset) -> np.ndarray:
    """(4, 4) world transform moving points by -offset: a camera posed with it sits at
    its old centre + offset."""
    matrix = np.eye(4)
    matrix[:3, 3] = -np.asarray(offset)
    return matrix


def test_tangencies_the_solve_cannot_explain_are_noise_and_change_nothing(rig, monkeypatch):
    """Over the RMS threshold, exact cameras are still kept: fitting contour noise lowers
    the RMS about 2-fold, a miscalibration's falls 25-70-fold."""
    _, _, true, alphas = rig
    monkeypatch.setattr(sc, "AGREEING_RMS_PX", 0.05)  # under this rig's 0.15 px of noise
    kept = sc.pre_calibrate(prepare_views(_views(true, alphas)),
                            FitOptions(refine_cameras=True))
    assert kept.world == {} and "up to noise" in kept.message


def test_a_refined_fit_reports_the_tangency_solve_in_each_views_correction(rig):
    """The corrections the add-on applies take the given cameras all the way: what the
    tangency solve found plus what the fit added."""
    v, _, true, alphas = rig
    moved = miscalibrated(true, v, 1.5, 0.02, np.random.default_rng(2))
    options = FitOptions(iterations=20, views_per_step=4, refine_cameras=True,
                         polish_steps=0, device="cpu")
    result = fit(_views(moved, alphas), None, None, options)
    assert result.status == "done", result.message
    assert "epipolar tangents" in result.message
    applied = [apply_to_pose(c, r) for c, r in zip(moved, result.camera_corrections,
                                                   strict=True)]
    assert _vertex_error_px(v, applied, true) < 0.3 * _vertex_error_px(v, moved, true)
    assert all(r.rotation_deg > 0.3 for r in result.camera_corrections)
    # the fitted mesh sits where the cameras as given put what the refined ones see
    assert "the refined cameras and the mesh moved together" in result.message
    drift = reconstruction_drift(applied, moved, result.vertices)
    turn = np.degrees(np.linalg.norm(Rotation.from_matrix(drift.rotation).as_rotvec()))
    assert turn < 1e-3 and abs(drift.scale - 1.0) < 1e-5
    assert np.linalg.norm(drift.translation) < 1e-5 * np.ptp(v, axis=0).max()


def test_a_hull_that_a_miscalibration_empties_points_to_refine_cameras(rig):
    _, _, true, alphas = rig
    turned = list(true)
    away = np.eye(4)
    away[:3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]  # 90 degrees about y
    turned[3] = dataclasses.replace(true[3], world_to_camera=away @ true[3].world_to_camera)
    with pytest.raises(FitError, match="Refine Cameras solves the cameras"):
        fit(_views(turned, alphas), None, None, FitOptions(iterations=1, device="cpu"))
    with pytest.raises(FitError, match="no point in common") as refined:
        fit(_views(turned, alphas), None, None, FitOptions(iterations=1, device="cpu",
                                                           refine_cameras=True))
    assert "Refine Cameras" not in str(refined.value)


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs an NVIDIA GPU with CuPy")
def test_a_refined_fit_with_the_tangency_solve_runs_on_the_gpu(rig):
    """The solve's corrections and the lazy camera steps on CUDA tensors: the reported
    corrections take the given cameras as close to the true ones as on the CPU."""
    v, _, true, alphas = rig
    moved = miscalibrated(true, v, 1.5, 0.02, np.random.default_rng(2))
    errors = {}
    for device in ("cpu", "cuda"):
        options = FitOptions(iterations=20, views_per_step=4, refine_cameras=True,
                             device=device)
        result = fit(_views(moved, alphas, held_out=(5,)), None, None, options)
        assert result.status == "done", result.message
        applied = [apply_to_pose(c, r) for c, r in zip(
            [c for i, c in enumerate(moved) if i != 5], result.camera_corrections,
            strict=True)]
        errors[device] = _vertex_error_px(v, applied, [c for i, c in enumerate(true) if i != 5])
    assert errors["cuda"] < 0.3 * _vertex_error_px(v, moved, true)
    assert abs(errors["cuda"] - errors["cpu"]) < 0.1
