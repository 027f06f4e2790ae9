"""Mesh helpers: triangulation, connectivity, subdivision, checks and repairs."""

import numpy as np
import pytest
import torch

from backend.fit import mesh_ops

CUBE_V = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float)
# Quads, counter-clockwise from outside.
CUBE_QUADS = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4],
                       [1, 5, 7, 3]])


def cube():
    faces, _ = mesh_ops.as_triangles(CUBE_QUADS)
    return CUBE_V.copy(), faces


def test_quads_are_fan_triangulated():
    tris, n_split = mesh_ops.as_triangles(CUBE_QUADS)
    assert tris.shape == (12, 3) and n_split == 6
    assert mesh_ops.check_mesh(tris).closed_manifold
    assert mesh_ops.signed_volume(CUBE_V, tris) == pytest.approx(1.0)


def test_polygon_lists_of_mixed_sizes_are_triangulated():
    polygons = [[0, 1, 2], [0, 2, 3, 4], [4, 5, 6, 7, 8]]
    tris, n_split = mesh_ops.as_triangles(polygons)
    assert n_split == 2
    assert tris.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4], [4, 5, 6], [4, 6, 7], [4, 7, 8]]


def test_triangles_pass_through_and_integral_floats_are_accepted():
    tris, n_split = mesh_ops.as_triangles(np.array([[0, 1, 2]], dtype=np.float32))
    assert n_split == 0 and tris.dtype == np.int64


@pytest.mark.parametrize("bad", [[[0, 1]], np.array([[0.5, 1, 2]])])
def test_bad_polygons_raise(bad):
    with pytest.raises(ValueError):
        mesh_ops.as_triangles(bad)


@pytest.mark.parametrize("level", [0, 1, 3])
def test_icosphere_is_closed_outward_and_on_the_unit_sphere(level):
    v, f = mesh_ops.icosphere(level)
    assert len(f) == 20 * 4**level and len(v) == 10 * 4**level + 2
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    report = mesh_ops.check_mesh(f)
    assert report.closed_manifold and report.inconsistent_edges == 0
    assert mesh_ops.signed_volume(v, f) > 0


def test_subdivision_keeps_shape_and_closedness_and_interpolates_attributes():
    v, f = cube()
    colors = np.random.default_rng(0).random((len(v), 3))
    v2, f2, (c2,) = mesh_ops.subdivide(v, f, [colors])
    e = mesh_ops.edges(f)
    assert len(f2) == 4 * len(f) and len(v2) == len(v) + len(e)
    assert mesh_ops.check_mesh(f2).closed_manifold
    assert mesh_ops.check_mesh(f2).inconsistent_edges == 0
    assert mesh_ops.signed_volume(v2, f2) == pytest.approx(1.0)
    assert np.allclose(v2[len(v):], 0.5 * (v[e[:, 0]] + v[e[:, 1]]))
    assert np.allclose(c2[len(v):], 0.5 * (colors[e[:, 0]] + colors[e[:, 1]]))


def test_subdivision_accepts_torch_tensors():
    v, f = cube()
    v2, f2 = mesh_ops.subdivide(torch.tensor(v), f)
    assert torch.is_tensor(v2) and v2.shape == (8 + 18, 3)


def test_edge_adjacency_pairs_every_edge_of_a_closed_mesh():
    v, f = cube()
    adj = mesh_ops.edge_adjacency(f)
    assert len(adj.edge) == len(mesh_ops.edges(f)) == 18
    for (a, b), (fa, fb), (oa, ob) in zip(adj.edge, adj.face_pair, adj.opposite, strict=True):
        assert {a, b} <= set(f[fa]) and {a, b} <= set(f[fb])
        assert oa in f[fa] and oa not in (a, b)
        assert ob in f[fb] and ob not in (a, b)


def test_check_mesh_finds_holes_and_nonmanifold_edges():
    v, f = cube()
    report = mesh_ops.check_mesh(f[1:])
    assert report.boundary_edges == 3 and not report.closed_manifold
    fin = np.array([[0, 1, 8]])  # a third face on the cube's edge (0, 1)
    report = mesh_ops.check_mesh(np.concatenate([f, fin]))
    assert report.nonmanifold_edges >= 1
    assert any("non-manifold" in m for m in report.describe())


def test_repair_removes_degenerate_duplicate_and_unused_and_fixes_orientation():
    v, f = cube()
    v = np.concatenate([v, [[5.0, 5.0, 5.0]]])  # unused vertex
    bad = np.concatenate([f, [[0, 0, 1]], f[:1]])  # degenerate + duplicate
    bad[3] = bad[3][::-1]  # one face flipped
    repaired = mesh_ops.repair_mesh(v, bad)
    text = " ".join(repaired.messages)
    assert "repeated corner" in text and "duplicate" in text and "no face" in text
    assert "flipped 1" in text
    assert len(repaired.faces) == 12 and len(repaired.vertices) == 8
    report = mesh_ops.check_mesh(repaired.faces)
    assert report.closed_manifold and report.inconsistent_edges == 0
    assert mesh_ops.signed_volume(repaired.vertices, repaired.faces) == pytest.approx(1.0)


def test_repair_turns_an_inside_out_mesh_outward():
    v, f = cube()
    repaired = mesh_ops.repair_mesh(v, f[:, ::-1])
    assert mesh_ops.signed_volume(repaired.vertices, repaired.faces) == pytest.approx(1.0)
    assert any("flipped 12" in m for m in repaired.messages)


def test_repair_reports_holes_it_leaves():
    v, f = cube()
    repaired = mesh_ops.repair_mesh(v, f[2:])
    assert any("boundary edges" in m for m in repaired.messages)


def test_face_components_counts_separate_pieces():
    v, f = cube()
    labels = mesh_ops.face_components(np.concatenate([f, f + 8]))
    assert len(np.unique(labels)) == 2


def test_face_components_label_each_face_with_its_piece():
    v, f = cube()
    # Two cubes with an unused vertex index between them, the second listed first.
    labels = mesh_ops.face_components(np.concatenate([f + 9, f]))
    assert labels.dtype == np.int64 and labels.shape == (24,)
    assert len(set(labels[:12])) == 1 and len(set(labels[12:])) == 1
    assert labels[0] != labels[12]
    assert len(mesh_ops.face_components(np.zeros((0, 3), dtype=np.int64))) == 0


def test_directed_edges_follow_each_faces_winding():
    faces = np.array([[0, 1, 2], [2, 1, 3]])
    assert mesh_ops.directed_edges(faces).tolist() == [
        [0, 1], [2, 1], [1, 2], [1, 3], [2, 0], [3, 2]]


def test_sample_surface_lies_on_the_mesh():
    v, f = cube()
    pts = mesh_ops.sample_surface(v, f, 500, seed=3)
    assert pts.shape == (500, 3)
    # Every point of the unit cube's surface has a coordinate at 0 or 1.
    on_face = np.isclose(pts, 0.0, atol=1e-9) | np.isclose(pts, 1.0, atol=1e-9)
    assert on_face.any(axis=1).all()
    assert np.array_equal(pts, mesh_ops.sample_surface(v, f, 500, seed=3))


def test_vertex_normals_of_a_sphere_point_outward():
    v, f = mesh_ops.icosphere(2)
    v, f = torch.tensor(v), torch.tensor(f)
    normals = mesh_ops.vertex_normals(v, f)
    np.testing.assert_allclose(normals.norm(dim=1), 1.0, atol=1e-12)
    assert float((normals * v / v.norm(dim=1, keepdim=True)).sum(dim=1).min()) > 0.99
    lonely = torch.cat([v, torch.zeros(1, 3, dtype=v.dtype)])  # a vertex on no face
    assert torch.all(mesh_ops.vertex_normals(lonely, f)[-1] == 0)
