"""The camera model against Blender itself: our silhouettes of the Spot cow match Cycles'.

Each case sets up a real Blender camera, renders it with Cycles (transparent film,
point-sampled pixel centres), reads the camera back with `devtools.cycles_render.camera_params`,
converts it with `backend.core.camera.blender_camera` and renders the soft silhouette.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("bpy")

from backend.core.camera import blender_camera, look_at  # noqa: E402
from backend.render.renderer import Cameras, RenderSettings, render_silhouette  # noqa: E402
from devtools import cycles_render as cycles  # noqa: E402

pytestmark = pytest.mark.blender

# Squared pixels. At 0.05 the soft alpha of Spot at 160x120 reaches 0.5 at pixel centres
# up to 0.33 px outside the silhouette, because ~10 sub-pixel faces meet at each contour
# point and their D = sigmoid(-d^2 / sigma) pile up in 1 - prod(1 - D): IoU 0.977 there,
# by design of the aggregation and not a camera error. 1e-3 keeps that band below 0.05 px.
SIGMA = 1e-3


def scaled(world: np.ndarray, sx: float, sy: float, sz: float) -> np.ndarray:
    return world @ np.diag([sx, sy, sz, 1.0])


@pytest.fixture(scope="module")
def spot_scene():
    scene = cycles.reset_scene()
    obj = cycles.load_obj(cycles.spot_path())
    cycles.configure_cycles(scene, samples=1, filter_width=0.01)
    vertices, faces = cycles.mesh_arrays(obj)
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    return scene, vertices, faces, centre


def orbit(centre, offset):
    return look_at(centre + np.asarray(offset, dtype=np.float64), centre)


CASES = {
    "landscape_auto": ((2.5, -3.0, 1.2), {"resolution_x": 160, "resolution_y": 120}),
    "portrait_auto": ((-3.0, -2.0, 1.5), {"resolution_x": 96, "resolution_y": 144}),
    "vertical_fit": ((3.0, 1.0, 0.5), {"resolution_x": 160, "resolution_y": 120,
                                       "sensor_fit": "VERTICAL", "sensor_height": 20.0}),
    "shift_x": ((-2.0, 3.0, 2.0), {"resolution_x": 160, "resolution_y": 120, "shift_x": 0.15}),
    "shift_y_portrait": ((3.5, 0.5, -1.0), {"resolution_x": 120, "resolution_y": 160,
                                            "shift_y": -0.12}),
    "lens_35mm": ((1.5, -1.8, 0.8), {"resolution_x": 160, "resolution_y": 120, "lens": 35.0}),
    "lens_85mm": ((4.0, -3.5, 1.5), {"resolution_x": 160, "resolution_y": 120, "lens": 85.0}),
    "pixel_aspect_2_1": ((2.0, 3.0, 1.0), {"resolution_x": 160, "resolution_y": 120,
                                           "pixel_aspect_x": 2.0}),
    "orthographic": ((-3.0, -2.5, 2.0), {"resolution_x": 160, "resolution_y": 120,
                                         "camera_type": "ORTHO", "ortho_scale": 2.2,
                                         "shift_x": 0.05}),
    "percentage_and_scaled_object": ((0.5, -4.0, 0.3), {"resolution_x": 320,
                                                        "resolution_y": 240,
                                                        "resolution_percentage": 50}),
}


def camera_for(name, centre):
    offset, settings = CASES[name]
    world = orbit(centre, offset)
    if name == "percentage_and_scaled_object":
        world = scaled(world, 1.5, 0.7, 2.0)  # Blender ignores a camera's object scale
    return {"matrix_world": world, **settings}


@pytest.mark.parametrize("name", list(CASES))
def test_soft_silhouette_matches_cycles_alpha(spot_scene, name):
    scene, vertices, faces, centre = spot_scene
    cam = cycles.add_camera(scene, camera_for(name, centre), name=name)
    reference = cycles.render_rgba(scene, cam)[..., 3] > 0.5

    matrices = blender_camera(**cycles.camera_params(cam, scene))
    alpha = render_silhouette(
        torch.tensor(vertices, dtype=torch.float32), torch.tensor(faces),
        Cameras.from_matrices([matrices]), RenderSettings(sigma=SIGMA))[0].numpy()
    ours = alpha > 0.5

    assert ours.shape == reference.shape
    assert 0.05 < reference.mean() < 0.9, "the cow should partly fill the frame"
    iou = (ours & reference).sum() / (ours | reference).sum()
    assert iou >= 0.99, f"{name}: IoU {iou:.4f} with Cycles"
    # Every pixel centre Cycles sees covered is inside a face, where D > 0.5 already.
    missed = (reference & ~ours).sum()
    assert missed <= 0.002 * reference.sum(), f"{name}: {missed} covered pixels missing"


def test_camera_params_read_back_what_was_set(spot_scene):
    scene, _, _, centre = spot_scene
    params = camera_for("orthographic", centre)
    params.update(pixel_aspect_y=1.5, resolution_percentage=75, sensor_width=30.0, lens=40.0)
    cam = cycles.add_camera(scene, params, name="read_back")
    back = cycles.camera_params(cam, scene)
    assert set(back) == set(cycles.CAMERA_KEYS)
    np.testing.assert_allclose(back.pop("matrix_world"), params.pop("matrix_world"), atol=1e-6)
    for key, value in params.items():
        assert back[key] == pytest.approx(value), key


def test_unknown_camera_parameter_is_rejected(spot_scene):
    scene = spot_scene[0]
    with pytest.raises(ValueError, match="focal_length"):
        cycles.add_camera(scene, {"focal_length": 50.0}, name="bad")


def test_cropped_render_border_is_rejected(spot_scene):
    scene = spot_scene[0]
    cam = cycles.add_camera(scene, {"resolution_x": 64, "resolution_y": 48}, name="crop")
    scene.render.use_border = scene.render.use_crop_to_border = True
    try:
        with pytest.raises(ValueError, match="Crop to Render Region"):
            cycles.camera_params(cam, scene)
    finally:
        scene.render.use_border = scene.render.use_crop_to_border = False


def test_mesh_arrays_round_trip_through_add_mesh(spot_scene):
    scene, vertices, faces, _ = spot_scene
    obj = cycles.add_mesh(vertices, faces, name="copy", scene=scene)
    try:
        back_vertices, back_faces = cycles.mesh_arrays(obj)
        np.testing.assert_allclose(back_vertices, vertices, atol=1e-6)
        np.testing.assert_array_equal(back_faces, faces)
    finally:
        import bpy

        bpy.data.objects.remove(obj)
