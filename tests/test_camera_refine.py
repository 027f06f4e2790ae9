"""Camera refinement during the fit (`backend.fit.camera_refine`): the correction math
(gradients, gauge, world and Blender conversions, flags), the loop's ramp, a small fit,
the add-on's apply, and end to end on Cycles targets with miscalibrated cameras."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from conftest import has_cuda
from fit_scenes import box, cameras, views_of
from scipy.spatial.transform import Rotation

from backend.core import messages
from backend.core.camera import blender_camera, look_at, orbit_cameras, world_to_camera
from backend.core.similarity import (
    ball_points,
    keep_reconstruction,
    project,
    reconstruction_drift,
    umeyama,
)
from backend.fit import joint_polish
from backend.fit.camera_refine import (
    CameraRefinement,
    apply_to_pose,
    correction_matrices,
    correction_messages,
    gauge_basis,
    miscalibrated,
    world_correction,
)
from backend.fit.fitting import FitError, FitOptions, fit
from backend.fit.inputs import prepare_views
from backend.fit.joint_polish import JointObjective, conjugate_gradients, polish
from backend.fit.schedule import Schedule
from backend.fit.targets import Frame, view_groups
from backend.render.renderer import Cameras, RenderSettings, project_points

REFINE = FitOptions(refine_cameras=True, refine_focal=True)


def ring(count=6, distance=4.0, size=(40, 30)):
    """Normalised-frame cameras on a ring around the origin, plus their view indices."""
    cams = cameras(size, elevations=(20.0,), azimuths=count, distance=distance)
    return cams, list(range(10, 10 + count))


def refinement(cams, views, options=REFINE, dtype=torch.float64) -> CameraRefinement:
    return CameraRefinement(cams, views, [f"cam {i}" for i in views], options, "cpu", dtype)


def raw_vector(rotation, shift_over_distance) -> torch.Tensor:
    """Raw parameters (N, 6) from per-view w (N, 3) and t / d (N, 3)."""
    return torch.tensor(np.concatenate([rotation, shift_over_distance], axis=1))


def test_zero_corrections_leave_the_cameras_unchanged():
    cams, views = ring()
    ref = refinement(cams, views)
    batch = Cameras.from_matrices(cams[1:4], dtype=torch.float64)
    out = ref.apply(batch, views[1:4])
    torch.testing.assert_close(out.world_to_camera, batch.world_to_camera)
    torch.testing.assert_close(out.intrinsics, batch.intrinsics)


def test_projection_gradients_match_finite_differences():
    """float64 gradcheck of projected points w.r.t. the raw corrections and the focal
    scale, through the gauge projection, the rotation exponential and the projection."""
    cams, views = ring()
    ref = refinement(cams, views)
    batch = Cameras.from_matrices(cams, dtype=torch.float64)
    points = torch.tensor(np.random.default_rng(0).uniform(-0.8, 0.8, (7, 3)))

    def projected(raw, log_focal):
        ref.raw, ref.log_focal = raw, log_focal
        return project_points(points, ref.apply(batch, views))[..., :2]

    raw = (0.02 * torch.randn(len(cams), 6, dtype=torch.float64)).requires_grad_(True)
    log_focal = torch.tensor([0.01], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(projected, (raw, log_focal), eps=1e-6, atol=1e-5)


def _similarity_raw(cams, rotation, translation, dilation) -> np.ndarray:
    """Raw parameters of a world similarity x -> x + a x x + b + s x per camera."""
    pose = np.stack([c.world_to_camera for c in cams])
    centers = -np.einsum("nji,nj->ni", pose[:, :3, :3], pose[:, :3, 3])
    d = np.linalg.norm(centers, axis=1)[:, None]
    shift = np.cross(rotation, centers) + translation + dilation * centers
    return np.concatenate([np.tile(rotation, (len(cams), 1)), shift / d], axis=1)


def test_a_common_similarity_of_all_cameras_is_removed():
    """The gauge: raw parameters that move every camera by one similarity give no
    correction, and other parameters keep their non-gauge part."""
    cams, views = ring()
    ref = refinement(cams, views)
    gauge = _similarity_raw(cams, np.array([0.01, -0.02, 0.015]), np.array([0.03, 0.0, -0.01]),
                            0.02)
    ref.raw = torch.tensor(gauge)
    rotation, shift = ref.corrections()
    assert rotation.abs().max() < 1e-12 and shift.abs().max() < 1e-12
    other = np.random.default_rng(1).normal(0, 0.01, (len(cams), 6))
    ref.raw = torch.tensor(other + gauge)
    with_gauge = torch.cat(ref.corrections(), dim=1)
    ref.raw = torch.tensor(other)
    torch.testing.assert_close(with_gauge, torch.cat(ref.corrections(), dim=1))


def test_the_gauge_modes_are_image_preserving_motions_to_first_order():
    """A world rotation, translation and scaling applied to every camera equals, to first
    order, the per-view corrections the gauge basis names (so projecting them out is
    what fixes the gauge)."""
    cams, _ = ring()
    rotation, translation, dilation = np.array([0.0, 0.0, 1.0]), np.array([0.5, 0, 0]), 0.3
    eps = 1e-5
    raw = eps * _similarity_raw(cams, rotation, translation, dilation)
    pose = np.stack([c.world_to_camera for c in cams])
    centers = -np.einsum("nji,nj->ni", pose[:, :3, :3], pose[:, :3, 3])
    d = np.linalg.norm(centers, axis=1)[:, None]
    mats = correction_matrices(torch.tensor(raw[:, :3]), torch.tensor(raw[:, 3:] * d),
                               torch.tensor(centers)).numpy()
    a = eps * rotation
    world = np.eye(4)
    world[:3, :3] += np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    world[:3, :3] += eps * dilation * np.eye(3)
    world[:3, 3] = eps * translation
    for cam, mat in zip(cams, mats, strict=True):
        # perspective images only see the pose up to scale: compare normalised rows
        moved, expected = cam.world_to_camera @ mat, cam.world_to_camera @ world
        np.testing.assert_allclose(moved[:3] / np.linalg.norm(moved[2, :3]),
                                   expected[:3] / np.linalg.norm(expected[2, :3]), atol=1e-9)
    basis = gauge_basis(centers, d[:, 0], perspective=True)
    assert basis.shape == (6 * len(cams), 7)
    residual = raw.reshape(-1) - basis @ (basis.T @ raw.reshape(-1))
    assert np.abs(residual).max() < 1e-15


def test_world_correction_moves_the_blender_camera_like_the_normalised_one():
    """M @ matrix_world gives the world pose of the corrected normalised camera, and
    `apply_to_pose` agrees; the reported shift is the camera centre's move."""
    matrix_world = look_at((3.0, -4.0, 2.0), (0.2, 0.1, 0.3))
    cam = blender_camera(matrix_world=matrix_world, resolution_x=64, resolution_y=48)
    to_world = np.eye(4)
    to_world[:3, :3] *= 2.5
    to_world[:3, 3] = (0.2, 0.1, 0.3)
    normalised = dataclasses.replace(cam, world_to_camera=cam.world_to_camera @ to_world)
    center = -np.linalg.solve(normalised.world_to_camera[:3, :3],
                              normalised.world_to_camera[:3, 3])
    w = torch.tensor([[0.01, 0.02, -0.015]], dtype=torch.float64)
    t = torch.tensor([[0.03, -0.02, 0.01]], dtype=torch.float64)
    d = correction_matrices(w, t, torch.tensor(center[None]))[0].numpy()
    expected = normalised.world_to_camera @ d @ np.linalg.inv(to_world)
    m = world_correction(d, to_world)
    np.testing.assert_allclose(world_to_camera(m @ matrix_world), expected, atol=1e-12)
    moved_center = -expected[:3, :3].T @ expected[:3, 3]
    old_center = np.asarray(matrix_world)[:3, 3]
    assert np.linalg.norm(moved_center - old_center) == pytest.approx(
        2.5 * float(t.norm()), rel=1e-9)
    report = type("C", (), {"world_correction": m, "focal_scale": 1.1})()
    moved = apply_to_pose(cam, report)
    np.testing.assert_allclose(moved.world_to_camera, expected, atol=1e-12)
    assert moved.intrinsics[0, 0] == pytest.approx(1.1 * cam.intrinsics[0, 0])
    assert moved.intrinsics[0, 2] == cam.intrinsics[0, 2]


def test_miscalibrated_cameras_turn_and_move_by_the_amounts_asked_with_no_common_part():
    target = np.array([0.5, 0.0, 0.2])
    cams = cameras((32, 32), elevations=(-10.0, 40.0), azimuths=5, distance=5.0,
                   target=tuple(target))
    points = ball_points(target, 1.0)
    centre = 0.5 * (points.min(axis=0) + points.max(axis=0))  # the docstring's centre
    moved = miscalibrated(cams, points, 1.5, 0.02, np.random.default_rng(3))
    for cam, out in zip(cams, moved, strict=True):
        r0, r1 = cam.world_to_camera[:3, :3], out.world_to_camera[:3, :3]
        angle = np.degrees(np.arccos(np.clip((np.trace(r0.T @ r1) - 1) / 2, -1, 1)))
        c0 = -r0.T @ cam.world_to_camera[:3, 3]
        c1 = -r1.T @ out.world_to_camera[:3, 3]
        assert angle == pytest.approx(1.5, rel=1e-6)
        assert np.linalg.norm(c1 - c0) == pytest.approx(0.02 * np.linalg.norm(c0 - centre),
                                                        rel=1e-6)
    # what the images cannot tell (a similarity of all cameras) is gone: the moved
    # cameras put the object where the true ones do, to a small part of one camera's move
    drift = reconstruction_drift(cams, moved, points)
    turn = np.degrees(np.linalg.norm(Rotation.from_matrix(drift.rotation).as_rotvec()))
    assert turn < 0.01 and abs(drift.scale - 1.0) < 1e-4
    assert np.linalg.norm(drift.apply(target) - target) < 0.001 * 5.0


def _axis(rotation: np.ndarray) -> np.ndarray:
    """The unit axis of a rotation matrix (3, 3)."""
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0],
                     rotation[1, 0] - rotation[0, 1]])
    return axis / np.linalg.norm(axis)


def test_a_runaway_correction_is_flagged_and_named():
    cams, views = ring()
    ref = refinement(cams, views, FitOptions(refine_cameras=True, refine_max_degrees=2.0))
    raw = np.zeros((len(cams), 6))
    raw[2, :3] = np.radians([0.0, 0.0, 6.0])
    raw[4, :3] = np.radians([0.0, 0.0, -6.0])
    ref.raw = torch.tensor(raw)
    report = ref.report(torch.zeros(4, 3, dtype=torch.float64) + 0.1, np.eye(4))
    flagged = [c.name for c in report if c.flagged]
    assert flagged == ["cam 12", "cam 14"]
    assert "limit 2.0" in report[2].reason
    assert report[2].reprojection_px > 1.0 and report[0].reprojection_px < 1e-9
    text = " ".join(correction_messages(report))
    assert "cam 12" in text and "will not be applied" in text


def test_refinement_needs_three_views_and_valid_options():
    cams, views = ring(count=2)
    with pytest.raises(FitError, match="at least 3"):
        refinement(cams, views)
    with pytest.raises(FitError, match="refine_max_degrees"):
        FitOptions(refine_max_degrees=0.0)


def test_camera_ramp_starts_after_the_coarse_levels():
    schedule = Schedule(FitOptions(iterations=100, coarse_fraction=0.5, refine_ramp=0.1), 128)
    ramps = [schedule.at(i).camera_ramp for i in range(100)]
    assert max(ramps[:50]) == 0.0 and schedule.at(49).level < len(schedule.levels) - 1
    assert 0 < ramps[50] < ramps[55] < 1 and ramps[59] == 1.0 and ramps[-1] == 1.0


@pytest.fixture(scope="module")
def box_views():
    v, f = box((0.7, 0.5, 0.4))
    return views_of(v, f, cameras((48, 48)), held_out=(2, 9))


def test_a_refined_fit_reports_every_training_view_and_the_done_message_carries_it(
        box_views):
    options = FitOptions(iterations=30, views_per_step=4, refine_cameras=True,
                         coarse_fraction=0.3, device="cpu")
    result = fit(box_views, None, None, options)
    names = [v.name for v in box_views if not v.held_out]
    assert result.status == "done", result.message
    assert [c.name for c in result.camera_corrections] == names
    assert all(np.isfinite(c.reprojection_px) and not c.flagged for c in result.camera_corrections)
    assert any(c.rotation_deg > 0 for c in result.camera_corrections)
    assert "refined 10 cameras" in result.message
    assert result.loss_history[-1]["camera"] >= 0
    done = json.loads(json.dumps(messages.done(1, result), default=lambda a: a.tolist()))
    assert [c["name"] for c in done["camera_corrections"]] == names
    assert np.asarray(done["camera_corrections"][0]["world_correction"]).shape == (4, 4)
    plain = fit(box_views, None, None, dataclasses.replace(options, refine_cameras=False))
    assert plain.camera_corrections == [] and "camera" not in plain.loss_history[-1]


def test_a_refined_fit_of_orthographic_views_keeps_the_mesh_where_the_given_cameras_put_it():
    """Orthographic views have no epipoles (no tangency solve) and see the scale: the
    fit's frame carry is a rigid motion that leaves the mesh where the given cameras put
    what the refined ones see."""
    v, f = box((0.7, 0.5, 0.4))
    ortho = [blender_camera(matrix_world=m, resolution_x=48, resolution_y=48,
                            camera_type="ORTHO", ortho_scale=2.0)
             for m in orbit_cameras(6, [-25.0, 30.0], 5.0)]
    given = miscalibrated(ortho, v, 1.0, 0.01, np.random.default_rng(4))
    views = [dataclasses.replace(view, camera=c)
             for view, c in zip(views_of(v, f, ortho), given, strict=True)]
    result = fit(views, None, None, FitOptions(iterations=30, views_per_step=4,
                                                refine_cameras=True, device="cpu"))
    assert result.status == "done", result.message
    assert "orthographic views have no epipoles" in result.message
    assert "the refined cameras and the mesh moved together" in result.message
    refined = [apply_to_pose(c, r) for c, r in zip(given, result.camera_corrections,
                                                   strict=True)]
    drift = reconstruction_drift(refined, given, result.vertices)
    assert drift.scale == 1.0
    np.testing.assert_allclose(drift.rotation, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(drift.translation, np.zeros(3), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs an NVIDIA GPU with CuPy")
def test_refinement_runs_on_the_gpu_like_on_the_cpu(box_views):
    """The first-order refinement agrees across devices (the polish, whose accepted steps
    can differ with rounding, is compared on its own below)."""
    options = FitOptions(iterations=30, views_per_step=4, refine_cameras=True,
                         coarse_fraction=0.3, polish_steps=0)
    cpu = fit(box_views, None, None, dataclasses.replace(options, device="cpu"))
    gpu = fit(box_views, None, None, dataclasses.replace(options, device="cuda"))
    assert gpu.device == "cuda" and len(gpu.camera_corrections) == 10
    for a, b in zip(cpu.camera_corrections, gpu.camera_corrections, strict=True):
        assert abs(a.rotation_deg - b.rotation_deg) < 0.05
        assert abs(a.reprojection_px - b.reprojection_px) < 0.2


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs an NVIDIA GPU with CuPy")
def test_the_polish_runs_on_the_gpu_and_keeps_the_fit_as_good(box_views):
    options = FitOptions(iterations=30, views_per_step=4, refine_cameras=True,
                         coarse_fraction=0.3, polish_steps=2)
    cpu = fit(box_views, None, None, dataclasses.replace(options, device="cpu"))
    gpu = fit(box_views, None, None, dataclasses.replace(options, device="cuda"))
    assert gpu.status == "done" and "polished the mesh and the cameras" in gpu.message
    assert abs(gpu.mean_fit_iou - cpu.mean_fit_iou) < 0.01


# --- the joint second-order polish (backend.fit.joint_polish) -------------------------


def _polish_scene(dtype=torch.float64):
    """A subdivided box seen by 8 cameras whose poses are off by 1 degree and 1% of their
    distance: (true vertices (V, 3), faces, the training groups at full size with the
    moved cameras, the true cameras, the moved ones, a refinement of the moved ones);
    world = normalised frame."""
    vertices, faces = box(subdivisions=2)
    true = cameras((48, 48), elevations=(-20.0, 35.0), azimuths=4, distance=4.0)
    moved = miscalibrated(true, vertices, 1.0, 0.01, np.random.default_rng(3))
    views = [dataclasses.replace(v, camera=c)
             for v, c in zip(views_of(vertices, faces, true), moved, strict=True)]
    prep = prepare_views(views)
    groups = view_groups(prep, prep.train_idx, 1.0, Frame(np.zeros(3), 1.0), False, "cpu",
                         dtype)
    ref = CameraRefinement(moved, prep.train_idx, prep.names, FitOptions(refine_cameras=True),
                           "cpu", dtype)
    return vertices, faces, groups, true, moved, ref


def _camera_error_px(ref, raw, moved, true, points) -> float:
    """Mean reprojection distance (px) of ``points`` between the moved cameras corrected by
    ``raw`` (N, 6) and the true ones, once the corrected ones are carried by the one
    similarity no image shows to put ``points`` where the true ones do."""
    mats = ref.matrices(raw).detach().numpy()
    corrected = [dataclasses.replace(cam, world_to_camera=cam.world_to_camera @ mat)
                 for cam, mat in zip(moved, mats, strict=True)]
    kept = keep_reconstruction(true, corrected, points)
    return float(np.mean([np.linalg.norm(project(a, points)[0] - project(b, points)[0], axis=1)
                          .mean() for a, b in zip(kept, true, strict=True)]))


def test_the_finite_difference_jvp_agrees_with_the_autograd_vjp(monkeypatch):
    """<u, J v> by a forward difference of the render equals <J^T u, v> by autograd: the
    two halves of the Gauss-Newton product are transposes of one Jacobian. (In float64
    with a step a hundredth of the polish's; at its float32-safe step, 0.002 px, the
    difference is a few to 13% off on this box's corners, and at 0.0002 px up to 5%.)"""
    monkeypatch.setattr(joint_polish, "DIFFERENCE_STEP_PX", 2e-5)
    vertices, faces, groups, _, _, ref = _polish_scene()
    problem = JointObjective(torch.tensor(vertices), faces, groups, RenderSettings(), ref,
                             FitOptions(refine_cameras=True))
    x = torch.zeros(problem.size, dtype=torch.float64, requires_grad=True)
    r = problem.residual(x, for_jacobian=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        u = torch.randn(r.shape, generator=gen, dtype=torch.float64)
        v = torch.randn(problem.size, generator=gen, dtype=torch.float64)
        jtu = torch.autograd.grad(r, x, u, retain_graph=True)[0]
        forward = float(u @ problem.jvp(x.detach(), v, r.detach()))
        assert forward == pytest.approx(float(jtu @ v), rel=0.01)


def test_conjugate_gradients_solve_a_preconditioned_spd_system():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12))
    matrix = torch.tensor(a @ a.T + 12 * np.eye(12))
    b = torch.tensor(rng.normal(size=12))
    diag = torch.diagonal(matrix)
    x = conjugate_gradients(lambda v: matrix @ v, b, lambda v: v / diag, 40)
    torch.testing.assert_close(matrix @ x, b)


def test_the_polish_recovers_a_known_camera_offset_without_raising_the_objective():
    """From the true mesh with the cameras as given (no correction yet), the polish lowers
    its objective at every accepted step, moves the cameras most of the way back to the
    true ones, and leaves the gauge (a common similarity of all cameras) untouched."""
    vertices, faces, groups, true, moved, ref = _polish_scene()
    before = _camera_error_px(ref, ref.raw.detach(), moved, true, vertices)
    result = polish(torch.tensor(vertices), faces, groups, RenderSettings(), ref,
                    FitOptions(refine_cameras=True, polish_steps=6))
    after = _camera_error_px(ref, result.raw, moved, true, vertices)
    assert len(result.losses) > 1
    assert all(b < a for a, b in zip(result.losses[:-1], result.losses[1:], strict=True))
    assert after < 0.5 * before, (before, after)
    flat = result.raw.reshape(-1)
    assert float((ref.gauge.T @ flat).abs().max()) < 1e-9
    assert torch.equal(ref.raw.detach(), torch.zeros_like(ref.raw))  # the caller applies it


def test_a_refined_fit_is_polished_unless_polish_steps_is_zero(box_views):
    options = FitOptions(iterations=30, views_per_step=4, refine_cameras=True,
                         coarse_fraction=0.3, device="cpu", polish_steps=2)
    events = []
    polished = fit(box_views, None, None, options, on_progress=events.append)
    assert polished.status == "done", polished.message
    assert "polished the mesh and the cameras together" in polished.message
    steps = [e for e in events if "polish" in e.losses]  # the viewport follows the polish
    taken = int(re.search(r"together: (\d+) Gauss-Newton", polished.message).group(1))
    assert len(steps) == taken and all(e.vertices is not None for e in steps)
    if steps:  # the result is the last step carried into the given cameras' frame
        carry = umeyama(steps[-1].vertices, polished.vertices)
        np.testing.assert_allclose(carry.apply(steps[-1].vertices), polished.vertices, atol=1e-5)
        assert np.linalg.norm(carry.translation) < 0.05 and abs(carry.scale - 1.0) < 0.01
    plain = fit(box_views, None, None, dataclasses.replace(options, polish_steps=0))
    assert "polished" not in plain.message
    with pytest.raises(FitError, match="polish_steps"):
        FitOptions(polish_steps=-1)


# --- the add-on: Apply Refined Cameras ------------------------------------------------


def test_the_panel_checkbox_becomes_the_backend_option():
    from softras_blender.fit_options import options_from_settings

    settings = {"iterations": 50, "sharpness": "MEDIUM", "fit_colors": False,
                "smoothness": 1.0, "start": "HULL", "align_mesh": False}
    assert "refine_cameras" not in options_from_settings(settings, "CPU")
    options = options_from_settings({**settings, "refine_cameras": True}, "CPU")
    assert FitOptions.from_dict(options).refine_cameras


def _camera_object(bpy, name, eye, lens=50.0):
    from mathutils import Matrix

    data = bpy.data.cameras.new(name)
    data.lens = lens
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    obj.matrix_world = Matrix(look_at(eye, (0.0, 0.0, 0.0)).tolist())
    obj.scale = (2.0, 2.0, 2.0)  # object scale is kept, not part of the pose
    return obj


@pytest.mark.blender
def test_apply_refined_cameras_moves_each_camera_once_and_skips_flagged_ones(addon):
    import bpy

    from softras_blender import camera_refine_ops, runtime, scene_export

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    objs = [_camera_object(bpy, f"Cam {i}", eye) for i, eye in
            enumerate([(4.0, 0.0, 1.0), (0.0, 4.0, 1.0), (-4.0, 0.0, 1.0)])]
    bpy.context.view_layer.update()
    given = [scene_export.camera_matrices(scene, o) for o in objs]
    to_world = np.diag([1.5, 1.5, 1.5, 1.0])
    to_world[:3, 3] = (0.1, 0.0, 0.2)
    corrections = []
    for i, cam in enumerate(given):
        d = correction_matrices(torch.tensor([[0.01, -0.02, 0.005 * i]], dtype=torch.float64),
                                torch.tensor([[0.02, 0.0, -0.01]], dtype=torch.float64),
                                torch.zeros(1, 3, dtype=torch.float64))[0].numpy()
        corrections.append({
            "name": objs[i].name, "rotation_deg": 1.0, "shift": 0.03, "shift_fraction": 0.01,
            "reprojection_px": 2.0, "world_correction": world_correction(d, to_world).tolist(),
            "focal_scale": 1.05, "flagged": i == 2, "reason": "turned 9 degrees" * (i == 2),
            "world_to_camera": cam.world_to_camera.tolist(),
            "fx_per_px": cam.intrinsics[0, 0] / cam.width})
    runtime.state.last_result = {"camera_corrections": corrections}
    assert camera_refine_ops.correction_lines(corrections)[2].endswith("(flagged)")
    assert "UNDO" in camera_refine_ops.SOFTRAS_OT_apply_refined_cameras.bl_options
    flagged_before = [list(r) for r in objs[2].matrix_world]
    for _ in range(2):  # applying twice gives the same cameras
        assert bpy.ops.softras.apply_refined_cameras() == {"FINISHED"}
    for i in (0, 1):
        report = type("C", (), {"world_correction": np.asarray(corrections[i]["world_correction"]),
                                "focal_scale": 1.05})()
        expected = apply_to_pose(given[i], report)
        now = scene_export.camera_matrices(scene, objs[i])
        np.testing.assert_allclose(now.world_to_camera, expected.world_to_camera, atol=1e-5)
        np.testing.assert_allclose(now.intrinsics, expected.intrinsics, rtol=1e-5)
        assert tuple(objs[i].matrix_world.to_scale()) == pytest.approx((2.0, 2.0, 2.0))
    assert [list(r) for r in objs[2].matrix_world] == flagged_before
    runtime.state.last_result = None


# --- end to end: Cycles targets, miscalibrated cameras -----------------------------------


@pytest.mark.slow
@pytest.mark.blender
def test_refinement_recovers_most_of_the_held_out_iou_of_exact_cameras():
    """Fitting cameras turned 1.5 degrees and moved 2% of their distance (their common part
    removed: they put the torus where the true cameras do): the held-out IoU drops;
    refinement (the tangency solve, the joint fit, the mesh kept where the given cameras
    put it) wins it back to within issue 11's 0.005 of the exact cameras' fit.

    Measured (this scene: 12 views of 96 px; default options, 2-core CPU): exact 0.9692,
    miscalibrated 0.8500, refined 0.9668 (0.9595 before the fit kept the given cameras'
    frame; the 24-view benchmark: docs/benchmarks.md, "Which frame refined cameras keep").
    """
    pytest.importorskip("bpy")
    from fit_targets import cycles_views

    from devtools import cycles_render, fit_targets

    views = cycles_views("torus")
    _, torus = fit_targets.build_target("torus")
    true_vertices, _ = cycles_render.mesh_arrays(torus)
    train = [v for v in views if not v.held_out]
    moved = iter(miscalibrated([v.camera for v in train], true_vertices, 1.5, 0.02,
                               np.random.default_rng(1)))
    bad = [v if v.held_out else dataclasses.replace(v, camera=next(moved)) for v in views]
    options = FitOptions(device="cpu")

    def heldout(views, **kw):
        result = fit(views, None, None, dataclasses.replace(options, **kw))
        assert result.status == "done", result.message
        return float(np.mean(list(result.heldout_iou.values()))), result

    exact, _ = heldout(views)
    miscalibrated_iou, _ = heldout(bad)
    refined, result = heldout(bad, refine_cameras=True)
    print(f"held-out IoU: exact {exact:.4f}, miscalibrated {miscalibrated_iou:.4f}, "
          f"refined {refined:.4f}")
    assert miscalibrated_iou < exact - 0.02
    assert refined > miscalibrated_iou + 0.9 * (exact - miscalibrated_iou)
    assert refined > exact - 0.005
    assert not any(c.flagged for c in result.camera_corrections)


@pytest.mark.slow
@pytest.mark.blender
def test_headless_refine_cameras_saves_the_refined_cameras(tmp_path):
    """--refine-cameras: the report lists every fitted camera's correction and --output
    saves the cameras moved by them (the input file's cameras as they were)."""
    pytest.importorskip("bpy")
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, SOFTRAS_USER_DIR=str(tmp_path))

    def python(*args):
        done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=repo, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    python(repo / "devtools" / "demo.py", "scene", "--out", tmp_path, "--cameras", "8",
           "--size", "64", "--samples", "2", "--start", "UV_SPHERE")
    scene, out, report = tmp_path / "scene.blend", tmp_path / "out.blend", tmp_path / "r.json"
    python(repo / "softras_blender" / "headless.py", "--", "--scene", scene, "--iterations",
           "30", "--resolution", "32", "--device", "cpu", "--refine-cameras", "--output", out,
           "--report", report)
    data = json.loads(report.read_text())
    corrections = {c["name"]: c for c in data["camera_corrections"]}
    assert sorted(corrections) == sorted(data["fit_iou"])
    show = ("import bpy, sys, json; bpy.ops.wm.open_mainfile(filepath=sys.argv[1]);"
            "print(json.dumps({o.name: [list(r) for r in o.matrix_world] "
            "for o in bpy.data.objects if o.type == 'CAMERA'}))")
    before = json.loads(python("-c", show, scene).splitlines()[-1])
    after = json.loads(python("-c", show, out).splitlines()[-1])
    for name, c in corrections.items():
        expected = np.asarray(before[name]) if c["flagged"] else (
            np.asarray(c["world_correction"]) @ np.asarray(before[name]))
        np.testing.assert_allclose(after[name], expected, atol=1e-5)


def test_a_camera_step_moves_only_the_views_rendered_in_it():
    """Lazy Adam: a view not rendered this iteration keeps its correction and moments
    (else it drifts on momentum through the iterations that skip it)."""
    cams, views = ring()
    ref = refinement(cams, views)
    for chosen in ([views[0], views[1]], [views[2]]):
        ref.zero_grad()
        before = ref.raw.detach().clone()
        (ref.corrections()[0].sum() + ref.corrections()[1].pow(2).sum() + ref.raw.sum()
         ).backward()
        ref.step(1.0, 1.0, chosen)
        moved = (ref.raw.detach() != before).any(dim=1)
        assert moved.tolist() == [views[k] in chosen for k in range(len(views))]
    state = ref.optimizer.state[ref.raw]
    assert torch.all(state["exp_avg"][3:] == 0) and torch.all(state["exp_avg"][:3] != 0)


def test_views_the_tangency_solve_pinned_are_kept_by_the_fit():
    cams, views = ring()
    ref = CameraRefinement(cams, views, [f"cam {i}" for i in views], REFINE, "cpu",
                           torch.float64, fixed=[views[1], views[4]])
    ref.zero_grad()
    (ref.corrections()[0].sum() + ref.raw.sum()).backward()
    ref.step(1.0, 1.0, views)
    moved = (ref.raw.detach() != 0).any(dim=1).tolist()
    assert moved == [True, False, True, True, False, True]
