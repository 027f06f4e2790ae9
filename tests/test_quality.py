"""Triangle quality metrics (`backend.fit.quality`): angles against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from backend.fit.mesh_ops import icosphere
from backend.fit.quality import corner_angles, crossing_pairs, min_angles, quality_stats

RIGHT_ISOSCELES = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
EQUILATERAL = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, np.sqrt(3.0) / 2.0, 0.0]])


def test_corner_angles_of_a_right_isosceles_triangle_are_90_45_45():
    angles = corner_angles(RIGHT_ISOSCELES, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(angles, [[90.0, 45.0, 45.0]], atol=1e-12)


def test_corner_angles_sum_to_180_on_random_triangles():
    rng = np.random.default_rng(3)
    vertices = rng.normal(size=(30, 3))
    faces = rng.permutation(30).reshape(10, 3)
    np.testing.assert_allclose(corner_angles(vertices, faces).sum(axis=1), 180.0, atol=1e-9)


def test_equilateral_triangle_has_minimum_angle_60():
    np.testing.assert_allclose(min_angles(EQUILATERAL, np.array([[0, 1, 2]])), [60.0])


def test_minimum_angle_is_independent_of_winding_scale_and_position():
    faces = np.array([[0, 1, 2]])
    base = min_angles(RIGHT_ISOSCELES, faces)
    moved = RIGHT_ISOSCELES * 7.5 + np.array([3.0, -2.0, 10.0])
    np.testing.assert_allclose(min_angles(moved, faces[:, ::-1]), base, atol=1e-12)


def test_sliver_has_a_tiny_minimum_angle():
    # The apex 0.01 above a unit base: angles at the base are atan(0.01 / 0.5).
    sliver = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.01, 0.0]])
    expected = np.degrees(np.arctan(0.01 / 0.5))
    np.testing.assert_allclose(min_angles(sliver, np.array([[0, 1, 2]])), [expected], rtol=1e-9)


def test_degenerate_triangles_have_minimum_angle_zero():
    collinear = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    faces = np.array([[0, 1, 2], [0, 0, 1]])  # collinear corners; a repeated corner
    np.testing.assert_array_equal(min_angles(collinear, faces), [0.0, 0.0])


def test_stats_of_an_icosphere():
    vertices, faces = icosphere(2)
    angles = min_angles(vertices, faces)
    stats = quality_stats(vertices, faces)
    assert stats["faces"] == 320
    assert stats["min_angle_min"] == pytest.approx(angles.min())
    assert stats["min_angle_mean"] == pytest.approx(angles.mean())
    assert stats["min_angle_p5"] == pytest.approx(np.percentile(angles, 5))
    # Subdivided icosahedron triangles are nearly equilateral.
    assert 50.0 < stats["min_angle_min"] <= stats["min_angle_p5"] <= stats["min_angle_mean"] <= 60
    assert stats["pct_under_10"] == 0.0 and stats["pct_under_20"] == 0.0


def test_stats_count_slivers_under_each_threshold():
    # Four triangles with minimum angles 5, 15, 45 and 60 degrees: 1 under 10, 2 under 20.
    triangles = []
    for apex_angle in (5.0, 15.0, 45.0):
        # Isosceles with base angles `apex_angle`: the minimum is the base angle (< 60).
        height = 0.5 * np.tan(np.radians(apex_angle))
        triangles.append([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, height, 0.0]])
    triangles.append(EQUILATERAL.tolist())
    vertices = np.array(triangles).reshape(-1, 3)
    faces = np.arange(12).reshape(4, 3)
    np.testing.assert_allclose(min_angles(vertices, faces), [5.0, 15.0, 45.0, 60.0], atol=1e-9)
    stats = quality_stats(vertices, faces)
    assert stats["pct_under_10"] == 25.0
    assert stats["pct_under_20"] == 50.0
    assert stats["min_angle_min"] == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("vertices", "faces", "message"),
    [
        (np.zeros((3, 2)), np.array([[0, 1, 2]]), "vertices must have shape"),
        (np.zeros((3, 3)), np.array([[0, 1, 2, 0]]), "faces must be an integer array"),
        (np.zeros((3, 3)), np.array([[0.0, 1.0, 2.0]]), "faces must be an integer array"),
        (np.zeros((3, 3)), np.array([[0, 1, 3]]), "face indices must lie in"),
        (np.full((3, 3), np.nan), np.array([[0, 1, 2]]), "vertices must be finite"),
    ],
)
def test_bad_input_is_refused_with_a_reason(vertices, faces, message):
    with pytest.raises(ValueError, match=message):
        min_angles(vertices, faces)


def test_stats_refuse_a_mesh_without_faces():
    with pytest.raises(ValueError, match="no faces"):
        quality_stats(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64))


def _all_pairs_crossing(vertices, faces) -> set[tuple[int, int]]:
    """The crossing pairs by testing every pair of faces (no grid): the reference."""
    from backend.fit.quality import _triangles_cross

    i, j = np.triu_indices(len(faces), k=1)
    shared = (faces[i][:, :, None] == faces[j][:, None, :]).sum(axis=(1, 2))
    i, j = i[shared <= 1], j[shared <= 1]
    p, q = vertices[faces[i]], vertices[faces[j]]
    hit = _triangles_cross(p, q) | _triangles_cross(q, p)
    return set(zip(i[hit].tolist(), j[hit].tolist(), strict=True))


def test_crossing_pairs_finds_two_triangles_through_each_other_and_not_neighbours():
    vertices = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                         [0.2, 0.2, -1.0], [0.2, 0.2, 1.0], [1.0, 1.0, 0.5]])
    np.testing.assert_array_equal(crossing_pairs(vertices, np.array([[0, 1, 2], [3, 4, 5]])),
                                  [[0, 1]])
    # Moved beside the first triangle, the second one misses it.
    apart = vertices + np.array([[0, 0, 0]] * 3 + [[2.0, 0, 0]] * 3)
    assert len(crossing_pairs(apart, np.array([[0, 1, 2], [3, 4, 5]]))) == 0
    sphere_v, sphere_f = icosphere(3)
    assert len(crossing_pairs(sphere_v, sphere_f)) == 0  # neighbours touch, none cross


def test_crossing_pairs_counts_a_fold_of_triangles_sharing_a_vertex_not_an_edge():
    # Two triangles at vertex 0: the second folded back through the first; a third one
    # shares an edge with the first and lies flat beside it.
    vertices = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0],
                         [1.0, 0.5, -1.0], [1.0, 0.5, 1.0], [2.0, 2.0, 0.0]])
    faces = np.array([[0, 1, 2], [0, 3, 4], [1, 5, 2]])
    np.testing.assert_array_equal(crossing_pairs(vertices, faces), [[0, 1]])
    vertices[3:5, 0] = -1.0  # the second triangle swung to the other side: no fold
    assert len(crossing_pairs(vertices, faces)) == 0


def test_crossing_pairs_on_a_dented_sphere_match_testing_every_pair():
    # A cap of the sphere pushed in past the centre passes through the far side.
    vertices, faces = icosphere(2)
    vertices = vertices.copy()
    cap = vertices[:, 2] > 0.6
    vertices[cap, 2] -= 2.2
    found = crossing_pairs(vertices, faces)
    assert len(found) > 0
    assert set(map(tuple, found.tolist())) == _all_pairs_crossing(vertices, faces)


def test_crossing_pairs_on_random_triangle_soup_match_testing_every_pair():
    rng = np.random.default_rng(5)
    centres = rng.uniform(0.0, 1.0, size=(60, 1, 3))
    vertices = (centres + rng.normal(scale=0.15, size=(60, 3, 3))).reshape(-1, 3)
    faces = np.arange(180).reshape(60, 3)
    found = crossing_pairs(vertices, faces)
    expected = _all_pairs_crossing(vertices, faces)
    assert len(expected) > 5
    assert set(map(tuple, found.tolist())) == expected
    assert (found[:, 0] < found[:, 1]).all()
