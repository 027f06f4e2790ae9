"""Initial meshes from silhouettes: the carved visual hull and the box-fitted icosphere."""

import numpy as np
import pytest
import torch
from fit_scenes import box, cameras, render_images

from backend.core.camera import blender_camera, look_at
from backend.fit.losses import hard_iou
from backend.fit.mesh_ops import check_mesh, signed_volume
from backend.fit.visual_hull import (
    Silhouettes,
    bbox_sphere,
    hull_field,
    object_bounds,
    silhouette_sdf,
    sphere_subdivisions_for,
    visual_hull,
)
from backend.render.renderer import Cameras, RenderSettings, render_silhouette

HALF = np.array([0.8, 0.5, 0.4])
CENTER = np.array([0.3, 0.1, 0.0])


@pytest.fixture(scope="module")
def box_scene():
    v, f = box(HALF, CENTER)
    cams = cameras((64, 64), elevations=(-20.0, 20.0, 55.0), azimuths=8)
    images = render_images(v, f, cams)
    return v, f, cams, images


def silhouettes(cams, images):
    return Silhouettes.from_masks(cams, [im[..., 3] for im in images])


def test_silhouette_sdf_is_signed_pixel_distance_to_the_outline():
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:5, 3:6] = True
    sdf = silhouette_sdf(mask)
    assert sdf[3, 4] == pytest.approx(-1.5)  # centre pixel: 1.5 px inside the outline
    assert sdf[3, 6] == pytest.approx(0.5)  # first pixel outside
    assert sdf[3, 8] == pytest.approx(2.5)
    assert np.isinf(silhouette_sdf(np.zeros((3, 3), dtype=bool))).all()


def test_hull_is_closed_outward_and_contains_the_object(box_scene):
    v, f, cams, images = box_scene
    hull = visual_hull(silhouettes(cams, images), target_faces=1500)
    report = check_mesh(hull.faces)
    assert report.closed_manifold and report.inconsistent_edges == 0
    assert report.components == 1
    volume = signed_volume(hull.vertices, hull.faces)
    box_volume = float(np.prod(2 * HALF))
    # A visual hull is a superset of the object, but 24 views keep it tight.
    assert box_volume * 0.97 < volume < box_volume * 1.5
    assert np.all(hull.vertices.min(axis=0) < CENTER - HALF + 0.02)
    assert np.all(hull.vertices.max(axis=0) > CENTER + HALF - 0.02)
    assert np.all(hull.vertices.min(axis=0) > CENTER - HALF - 0.25)
    assert np.all(hull.vertices.max(axis=0) < CENTER + HALF + 0.25)
    # Every corner of the box lies inside the carved field, up to a pixel (the masks are
    # pixel-sampled): at 5 units with a focal length of 89 px, a pixel is 0.06 units.
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    assert np.all(hull_field(corners * HALF + CENTER, silhouettes(cams, images)) < 0.06)
    assert hull_field(CENTER[None], silhouettes(cams, images))[0] < -0.3


def test_hull_reproduces_the_silhouettes(box_scene):
    v, f, cams, images = box_scene
    hull = visual_hull(silhouettes(cams, images), target_faces=1500)
    alpha = render_silhouette(torch.tensor(hull.vertices, dtype=torch.float32),
                              torch.tensor(hull.faces), Cameras.from_matrices(cams),
                              RenderSettings(sigma=1e-3))
    iou = hard_iou(alpha, torch.tensor(images[..., 3]))
    assert iou.min().item() > 0.85 and iou.mean().item() > 0.9


@pytest.mark.parametrize("target", [600, 3000])
def test_hull_face_count_follows_the_target(box_scene, target):
    v, f, cams, images = box_scene
    hull = visual_hull(silhouettes(cams, images), target_faces=target)
    assert 0.5 * target <= len(hull.faces) <= 1.3 * target


def test_object_bounds_match_the_box(box_scene):
    v, f, cams, images = box_scene
    lo, hi, messages = object_bounds(silhouettes(cams, images))
    assert messages == []
    assert np.all(lo <= CENTER - HALF + 0.05) and np.all(hi >= CENTER + HALF - 0.05)
    assert np.all(hi - lo < 2 * HALF + 0.6)


def test_a_camera_looking_away_is_named(box_scene):
    v, f, cams, images = box_scene
    away = blender_camera(matrix_world=look_at((6.0, 0.0, 0.0), (12.0, 0.0, 0.0)),
                          resolution_x=64, resolution_y=64)
    masks = [im[..., 3] for im in images[:6]] + [images[0][..., 3]]
    sil = Silhouettes.from_masks(cams[:6] + [away], masks,
                                 [f"v{i}" for i in range(6)] + ["stray"])
    with pytest.raises(ValueError, match="stray"):
        visual_hull(sil)


def test_one_direction_cannot_bound_depth(box_scene):
    v, f, cams, images = box_scene
    with pytest.raises(ValueError, match="at least two views"):
        visual_hull(silhouettes(cams[:1], images[:1]))


def test_cut_silhouettes_still_give_a_bounded_hull():
    v, f = box(HALF, CENTER)
    # Close cameras: the box overflows the frame in every view.
    cams = cameras((48, 48), elevations=(-20.0, 20.0), azimuths=6, distance=2.2)
    images = render_images(v, f, cams)
    sil = silhouettes(cams, images)
    assert all(sil.cut)
    hull = visual_hull(sil, target_faces=800)
    assert check_mesh(hull.faces).closed_manifold
    # The views cannot bound the object, so the hull is clipped to a box, with a warning.
    assert any("do not bound the object" in m for m in hull.messages)
    assert np.all(hull.vertices.max(axis=0) - hull.vertices.min(axis=0) < 15)


def test_bbox_sphere_is_inscribed_in_the_box():
    lo, hi = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 4.0, 3.0])
    v, f = bbox_sphere(lo, hi, 2)
    assert len(f) == 320
    assert np.allclose(v.min(axis=0), lo) and np.allclose(v.max(axis=0), hi)
    assert signed_volume(v, f) > 0


def test_larger_images_get_finer_spheres():
    assert sphere_subdivisions_for(64, 64) < sphere_subdivisions_for(320, 240)
    assert sphere_subdivisions_for(320, 240) < sphere_subdivisions_for(1024, 768)
