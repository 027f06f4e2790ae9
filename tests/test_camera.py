"""backend.core.camera: Blender's camera and render settings -> intrinsics and extrinsics.

No Blender needed; tests/test_camera_cycles.py checks the same model against Cycles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.core.camera import (
    CameraMatrices,
    blender_camera,
    camera_centres,
    look_at,
    nearest_point_to_axes,
    orbit_cameras,
    world_to_camera,
)
from backend.render.renderer import Cameras, project_points

IDENTITY = np.eye(4)  # at the origin, looking down -Z, +Y up


def camera(**kwargs) -> CameraMatrices:
    params = {"matrix_world": IDENTITY, "resolution_x": 160, "resolution_y": 120}
    params.update(kwargs)
    return blender_camera(**params)


def project(cam: CameraMatrices, points) -> np.ndarray:
    """Pixel coordinates (N, 2) of world points through the renderer's projection."""
    cams = Cameras.from_matrices([cam], dtype=torch.float64)
    uvz = project_points(torch.tensor(np.asarray(points, dtype=np.float64)), cams)[0]
    return uvz[:, :2].numpy()


def blender_viewplane_project(point_cam, *, width, height, lens=50.0, sensor_width=36.0,
                              sensor_height=24.0, sensor_fit="AUTO", shift_x=0.0, shift_y=0.0,
                              aspect_x=1.0, aspect_y=1.0, ortho_scale=None):
    """Pixel (u, v from the top) of a point in Blender camera space (-Z forward, +Y up),
    written the way Blender's BKE_camera_params_compute_viewplane builds its view plane."""
    ycor = aspect_y / aspect_x
    clip_start = 0.1
    if ortho_scale is not None:
        pixsize = ortho_scale
    else:
        sensor = sensor_height if sensor_fit == "VERTICAL" else sensor_width
        pixsize = sensor * clip_start / lens
    fit = sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if aspect_x * width >= aspect_y * height else "VERTICAL"
    viewfac = width if fit == "HORIZONTAL" else ycor * height
    pixsize /= viewfac
    xmin = (-0.5 * width + shift_x * viewfac) * pixsize
    xmax = (0.5 * width + shift_x * viewfac) * pixsize
    ymin = (-0.5 * ycor * height + shift_y * viewfac) * pixsize
    ymax = (0.5 * ycor * height + shift_y * viewfac) * pixsize
    x, y, z = point_cam
    if ortho_scale is None:  # onto the plane at clip_start
        x, y = x * clip_start / -z, y * clip_start / -z
    u = (x - xmin) / (xmax - xmin) * width
    v = (ymax - y) / (ymax - ymin) * height
    return np.array([u, v])


# --- intrinsics ----------------------------------------------------------------------


def test_default_camera_has_centred_principal_point_and_lens_over_sensor_focal():
    cam = camera()
    fx = 50.0 / 36.0 * 160
    np.testing.assert_allclose(cam.intrinsics, [[fx, 0, 80], [0, fx, 60], [0, 0, 1]])
    assert (cam.width, cam.height, cam.orthographic) == (160, 120, False)


def test_auto_fit_on_portrait_image_fits_height_but_keeps_sensor_width():
    cam = camera(resolution_x=100, resolution_y=200, sensor_width=36.0, sensor_height=10.0)
    np.testing.assert_allclose(cam.intrinsics[0, 0], 50.0 / 36.0 * 200)
    np.testing.assert_allclose(cam.intrinsics[1, 1], 50.0 / 36.0 * 200)


def test_auto_fit_on_square_image_is_horizontal():
    cam = camera(resolution_x=100, resolution_y=100, sensor_width=30.0)
    np.testing.assert_allclose(cam.intrinsics[0, 0], 50.0 / 30.0 * 100)


def test_vertical_fit_uses_sensor_height_and_image_height():
    cam = camera(sensor_fit="VERTICAL", sensor_height=20.0)
    np.testing.assert_allclose(cam.intrinsics[0, 0], 50.0 / 20.0 * 120)


def test_horizontal_fit_on_portrait_image_uses_width():
    cam = camera(resolution_x=100, resolution_y=200, sensor_fit="HORIZONTAL")
    np.testing.assert_allclose(cam.intrinsics[0, 0], 50.0 / 36.0 * 100)


def test_sensor_fit_is_case_insensitive():
    np.testing.assert_allclose(camera(sensor_fit="vertical").intrinsics,
                               camera(sensor_fit="VERTICAL").intrinsics)


def test_auto_fit_compares_sizes_scaled_by_pixel_aspect():
    # 100x120 pixels that are twice as wide as tall: 200 >= 120, so horizontal.
    cam = camera(resolution_x=100, resolution_y=120, pixel_aspect_x=2.0)
    fx = 50.0 / 36.0 * 100
    np.testing.assert_allclose(cam.intrinsics[0, 0], fx)
    # ycor = 1/2: a vertical unit spans twice the pixels of a horizontal one.
    np.testing.assert_allclose(cam.intrinsics[1, 1], 2.0 * fx)


def test_vertical_fit_with_tall_pixels_scales_viewfac_by_ycor():
    cam = camera(sensor_fit="VERTICAL", pixel_aspect_y=2.0, sensor_height=24.0)
    fx = 50.0 / 24.0 * (2.0 * 120)
    np.testing.assert_allclose(cam.intrinsics[0, 0], fx)
    np.testing.assert_allclose(cam.intrinsics[1, 1], fx / 2.0)


def test_shift_moves_principal_point_by_shift_times_fitted_size():
    cam = camera(shift_x=0.1, shift_y=0.2)
    # Shifting the view right/up moves the scene left/down in the image.
    np.testing.assert_allclose(cam.intrinsics[:2, 2], [80 - 0.1 * 160, 60 + 0.2 * 160])


def test_shift_on_vertical_fit_is_in_units_of_the_height():
    cam = camera(resolution_x=100, resolution_y=200, shift_x=0.25, shift_y=-0.1)
    np.testing.assert_allclose(cam.intrinsics[:2, 2], [50 - 0.25 * 200, 100 - 0.1 * 200])


def test_resolution_percentage_scales_size_and_intrinsics_with_integer_rounding():
    half = camera(resolution_x=320, resolution_y=240, resolution_percentage=50)
    np.testing.assert_allclose(half.intrinsics, camera().intrinsics)
    odd = camera(resolution_x=101, resolution_y=75, resolution_percentage=50)
    assert (odd.width, odd.height) == (50, 37)


def test_orthographic_scale_spans_the_fitted_image_side():
    cam = camera(camera_type="ORTHO", ortho_scale=4.0)
    assert cam.orthographic
    np.testing.assert_allclose(cam.intrinsics[0, 0], 160 / 4.0)
    # A point 2 units right of the axis (half the scale) lands on the image's right edge.
    np.testing.assert_allclose(project(cam, [[2.0, 0.0, -5.0]]), [[160.0, 60.0]])
    # Depth does not matter.
    np.testing.assert_allclose(project(cam, [[1.0, 1.0, -1.0]]), project(cam, [[1.0, 1.0, -9.0]]))


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"width": 100, "height": 200},
        {"sensor_fit": "VERTICAL", "sensor_height": 20.0, "lens": 35.0},
        {"sensor_fit": "HORIZONTAL", "width": 90, "height": 160, "lens": 85.0},
        {"shift_x": 0.3, "shift_y": -0.15},
        {"aspect_x": 2.0, "shift_y": 0.1},
        {"aspect_y": 1.5, "width": 120, "height": 160, "shift_x": -0.2},
        {"ortho_scale": 3.0, "shift_x": 0.1},
        {"ortho_scale": 2.0, "sensor_fit": "VERTICAL", "aspect_x": 0.5},
    ],
)
def test_projection_matches_blenders_view_plane(settings):
    settings = dict(settings)
    width, height = settings.pop("width", 160), settings.pop("height", 120)
    ortho_scale = settings.get("ortho_scale")
    cam = blender_camera(
        matrix_world=IDENTITY, resolution_x=width, resolution_y=height,
        lens=settings.get("lens", 50.0), sensor_width=36.0,
        sensor_height=settings.get("sensor_height", 24.0),
        sensor_fit=settings.get("sensor_fit", "AUTO"),
        shift_x=settings.get("shift_x", 0.0), shift_y=settings.get("shift_y", 0.0),
        pixel_aspect_x=settings.get("aspect_x", 1.0), pixel_aspect_y=settings.get("aspect_y", 1.0),
        camera_type="PERSP" if ortho_scale is None else "ORTHO",
        ortho_scale=ortho_scale or 6.0,
    )
    rng = np.random.default_rng(0)
    points = rng.uniform([-1.0, -1.0, -6.0], [1.0, 1.0, -2.0], size=(20, 3))
    expected = np.stack([blender_viewplane_project(p, width=width, height=height, **settings)
                         for p in points])
    np.testing.assert_allclose(project(cam, points), expected, atol=1e-9)


# --- extrinsics ----------------------------------------------------------------------


def test_identity_camera_flips_y_and_z_into_opencv_axes():
    np.testing.assert_allclose(camera().world_to_camera, np.diag([1.0, -1.0, -1.0, 1.0]))


def test_points_right_of_and_above_the_view_axis_land_right_and_up_in_the_image():
    cam = camera()
    (u0, v0), (u_right, v_right), (u_up, v_up) = project(
        cam, [[0.0, 0.0, -4.0], [0.5, 0.0, -4.0], [0.0, 0.5, -4.0]])
    assert (u0, v0) == pytest.approx((80.0, 60.0))
    assert u_right > u0 and v_right == pytest.approx(v0)
    assert v_up < v0 and u_up == pytest.approx(u0)


def test_object_scale_of_the_camera_is_ignored():
    world = look_at((3.0, -2.0, 1.0), (0.0, 0.0, 0.0))
    scaled = world @ np.diag([2.0, 3.0, 0.5, 1.0])
    np.testing.assert_allclose(camera(matrix_world=scaled).world_to_camera,
                               camera(matrix_world=world).world_to_camera, atol=1e-12)


def test_translated_camera_sees_its_target_at_the_principal_point():
    cam = camera(matrix_world=look_at((4.0, -3.0, 2.0), (0.5, 0.2, 0.1)))
    np.testing.assert_allclose(project(cam, [[0.5, 0.2, 0.1]]), [[80.0, 60.0]], atol=1e-9)
    depth = cam.world_to_camera @ np.array([0.5, 0.2, 0.1, 1.0])
    assert depth[2] == pytest.approx(np.linalg.norm([3.5, -3.2, 1.9]))


def test_look_at_keeps_world_up_pointing_up_in_the_image():
    cam = camera(matrix_world=look_at((5.0, 0.0, 0.0), (0.0, 0.0, 0.0)))
    (_, v_low), (_, v_high) = project(cam, [[0.0, 0.0, -0.5], [0.0, 0.0, 0.5]])
    assert v_high < v_low


def test_orbit_cameras_all_look_at_the_target_from_the_given_distance():
    target = np.array([0.1, -0.2, 0.3])
    mats = orbit_cameras(6, [-20.0, 30.0], 2.5, target=target)
    assert len(mats) == 12
    for world in mats:
        np.testing.assert_allclose(np.linalg.norm(world[:3, 3] - target), 2.5)
        cam = camera(matrix_world=world)
        np.testing.assert_allclose(project(cam, [target]), [[80.0, 60.0]], atol=1e-9)


def test_dict_round_trip_keeps_every_field():
    cam = camera(matrix_world=look_at((1.0, 2.0, 3.0), (0.0, 0.0, 0.0)), camera_type="ORTHO")
    back = CameraMatrices.from_dict(cam.to_dict())
    np.testing.assert_allclose(back.intrinsics, cam.intrinsics)
    np.testing.assert_allclose(back.world_to_camera, cam.world_to_camera)
    assert (back.width, back.height, back.orthographic) == (160, 120, True)


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("lens", [0.0, -35.0, float("nan")])
def test_non_positive_focal_length_is_rejected(lens):
    with pytest.raises(ValueError, match="focal length"):
        camera(lens=lens)


def test_zero_focal_length_is_fine_for_an_orthographic_camera():
    assert camera(lens=0.0, camera_type="ORTHO", ortho_scale=2.0).orthographic


def test_zero_sensor_size_is_rejected():
    with pytest.raises(ValueError, match="sensor size"):
        camera(sensor_width=0.0)


def test_zero_orthographic_scale_is_rejected():
    with pytest.raises(ValueError, match="orthographic scale"):
        camera(camera_type="ORTHO", ortho_scale=0.0)


@pytest.mark.parametrize("size", [{"resolution_x": 0}, {"resolution_y": 0},
                                  {"resolution_x": 1, "resolution_percentage": 50}])
def test_empty_render_size_is_rejected(size):
    with pytest.raises(ValueError, match="render size"):
        camera(**size)


def test_non_positive_pixel_aspect_is_rejected():
    with pytest.raises(ValueError, match="pixel aspect"):
        camera(pixel_aspect_y=0.0)


def test_unknown_sensor_fit_is_rejected():
    with pytest.raises(ValueError, match="sensor_fit"):
        camera(sensor_fit="DIAGONAL")


def test_panoramic_camera_is_rejected():
    with pytest.raises(ValueError, match="PANO"):
        camera(camera_type="PANO")


def test_world_matrix_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="4x4"):
        camera(matrix_world=np.eye(3))


def test_world_matrix_with_nan_is_rejected():
    world = np.eye(4)
    world[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        camera(matrix_world=world)


def test_world_matrix_with_a_zero_scaled_axis_is_rejected():
    with pytest.raises(ValueError, match="singular"):
        camera(matrix_world=np.diag([1.0, 0.0, 1.0, 1.0]))


def test_camera_centres_of_rigid_and_scaled_poses():
    rng = np.random.default_rng(3)
    eyes = rng.normal(size=(5, 3)) * 4.0
    poses = np.stack([world_to_camera(look_at(e, (0.1, -0.2, 0.3))) for e in eyes])
    np.testing.assert_allclose(camera_centres(poses), eyes, atol=1e-9)
    scaled = poses.copy()
    scaled[:, :3, :3] *= 2.5  # the fit's normalised frame scales the rotation part
    np.testing.assert_allclose(camera_centres(scaled), eyes / 2.5, atol=1e-9)


def test_nearest_point_to_axes_finds_the_looked_at_point_and_refuses_parallel_axes():
    target = np.array([0.3, -0.1, 0.5])
    poses = np.stack([world_to_camera(m) for m in orbit_cameras(8, [20.0, -10.0], 4.0,
                                                                target=target)])
    centres = camera_centres(poses)
    # directions need not be unit
    np.testing.assert_allclose(nearest_point_to_axes(centres, 3.0 * poses[:, 2, :3]), target,
                               atol=1e-9)
    parallel = np.tile([0.0, 0.0, 1.0], (4, 1))
    assert nearest_point_to_axes(np.random.default_rng(0).normal(size=(4, 3)), parallel) is None
