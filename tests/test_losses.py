"""The fitter's loss terms: known values on tiny meshes and images, and their gradients."""

import numpy as np
import pytest
import torch
from conftest import icosphere

from backend.fit import losses
from backend.fit.mesh_ops import edge_adjacency, edges, laplacian

# Two triangles sharing the edge (0, 1), both counter-clockwise seen from +z when flat.
HINGE_FACES = np.array([[0, 1, 2], [1, 0, 3]])


def hinge(angle_deg: float) -> torch.Tensor:
    """Vertices of the hinge with dihedral angle `angle_deg` between its two flaps."""
    a = np.radians(angle_deg)
    return torch.tensor(
        [[-1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, np.cos(a), np.sin(a)]],
        dtype=torch.float64,
    )


def octahedron():
    v = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                     dtype=torch.float64)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                  [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return v, f


def test_iou_loss_is_zero_for_identical_and_one_for_disjoint_silhouettes():
    a = torch.zeros(1, 4, 4)
    a[0, :2] = 1.0
    b = torch.zeros(1, 4, 4)
    b[0, 2:] = 1.0
    assert losses.silhouette_iou_loss(a, a).item() == pytest.approx(0.0)
    assert losses.silhouette_iou_loss(a, b).item() == pytest.approx(1.0)


def test_iou_loss_known_soft_value_and_batch_mean():
    pred = torch.full((1, 2, 2), 0.5)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # |A*T| = 1, |A + T - A*T| = 2 + 2 - 1 = 3.
    assert losses.silhouette_iou_loss(pred, target).item() == pytest.approx(1 - 1 / 3)
    both = losses.silhouette_iou_loss(torch.cat([pred, target]), torch.cat([target, target]))
    assert both.item() == pytest.approx((1 - 1 / 3) / 2)


def test_iou_loss_of_two_empty_images_is_zero():
    empty = torch.zeros(2, 3, 3)
    assert losses.silhouette_iou_loss(empty, empty).item() == 0.0


def test_iou_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    pred = torch.rand(2, 5, 6, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 5, 6, dtype=torch.float64) > 0.5).double()
    assert torch.autograd.gradcheck(lambda p: losses.silhouette_iou_loss(p, target), (pred,))


def test_hard_iou_thresholds_both_images():
    pred = torch.tensor([[[0.9, 0.6], [0.4, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # pred > 0.5: two pixels, target: two pixels, one shared -> 1/3.
    assert losses.hard_iou(pred, target).item() == pytest.approx(1 / 3)
    assert losses.hard_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0


def test_color_l1_only_counts_the_masked_pixels():
    pred = torch.zeros(1, 2, 2, 3)
    target = torch.ones(1, 2, 2, 3)
    target[0, 1] = 7.0  # outside the mask: ignored
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert losses.color_l1_loss(pred, target, mask).item() == pytest.approx(1.0)
    assert losses.color_l1_loss(pred, target, torch.zeros(1, 2, 2)).item() == 0.0


def test_laplacian_is_sparse_and_matches_the_dense_definition():
    v, f = octahedron()
    lap = laplacian(f, 6, dtype=torch.float64)
    assert lap.is_sparse
    dense = lap.to_dense()
    assert torch.allclose(dense.sum(dim=1), torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(torch.diagonal(dense), torch.ones(6, dtype=torch.float64))
    # Vertex 0's neighbours are 2, 3, 4 and 5, each weighted -1/4.
    assert dense[0, 2].item() == pytest.approx(-0.25)
    assert dense[0, 1].item() == 0.0


def test_laplacian_loss_of_octahedron_is_squared_radius():
    v, f = octahedron()
    lap = laplacian(f, 6, dtype=torch.float64)
    # Every vertex's neighbours average to the origin, so (L v)_i = v_i, |v_i|^2 = 1.
    assert losses.laplacian_loss(v, lap).item() == pytest.approx(1.0)
    assert losses.laplacian_loss(2 * v, lap).item() == pytest.approx(4.0)
    v = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: losses.laplacian_loss(x, lap), (v,))


@pytest.mark.parametrize(("angle", "expected"), [(180.0, 0.0), (90.0, 1.0), (0.0, 4.0)])
def test_flatten_loss_known_dihedral_angles(angle, expected):
    adj = edge_adjacency(HINGE_FACES)
    assert len(adj.edge) == 1
    assert losses.flatten_loss(hinge(angle), adj).item() == pytest.approx(expected, abs=1e-9)


def test_flatten_loss_gradient():
    adj = edge_adjacency(HINGE_FACES)
    v = hinge(120.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: losses.flatten_loss(x, adj), (v,))


@pytest.mark.parametrize(("angle", "expected"), [(180.0, 0.0), (90.0, 1.0)])
def test_normal_consistency_known_values(angle, expected):
    adj = edge_adjacency(HINGE_FACES)
    faces = torch.as_tensor(HINGE_FACES)
    value = losses.normal_consistency_loss(hinge(angle), faces, adj).item()
    assert value == pytest.approx(expected, abs=1e-9)


def test_normal_consistency_gradient():
    adj = edge_adjacency(HINGE_FACES)
    faces = torch.as_tensor(HINGE_FACES)
    v = hinge(130.0).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: losses.normal_consistency_loss(x, faces, adj), (v,))


def test_edge_length_loss_known_value_and_gradient():
    v, f = octahedron()
    e = torch.as_tensor(edges(f))
    side = 2**0.5  # every octahedron edge
    assert losses.edge_length_loss(v, e, side).item() == pytest.approx(0.0)
    # Twice as long: ((2s - s) / s)^2 = 1.
    assert losses.edge_length_loss(2 * v, e, side).item() == pytest.approx(1.0)
    v = (v * 1.3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: losses.edge_length_loss(x, e, side), (v,))


def test_regularisers_of_a_closed_convex_mesh_have_no_interior_edges_missing():
    v, f = octahedron()
    adj = edge_adjacency(f)
    assert len(adj.edge) == 12  # every edge of a closed mesh has two faces
    # A convex polyhedron folds at every edge, so flatten is positive.
    assert losses.flatten_loss(v, adj).item() > 0


def grid(n: int = 9, height=None):
    """A flat n x n grid of unit squares split in two, z = height(x, y) (default 0)."""
    x, y = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64))
    z = np.zeros_like(x) if height is None else height(x, y)
    v = torch.tensor(np.stack([x, y, z], axis=-1).reshape(-1, 3))
    k = np.arange(n * n).reshape(n, n)[:-1, :-1].reshape(-1)
    f = np.concatenate([np.stack([k, k + 1, k + n + 1], 1), np.stack([k, k + n + 1, k + n], 1)])
    return v, f


def test_mean_curvature_of_a_sphere_is_the_inverse_radius():
    v, f = icosphere(3, radius=2.0)
    curvature = losses.mean_curvature(v, f, laplacian(f.numpy(), len(v), dtype=torch.float64))
    np.testing.assert_allclose(curvature.numpy(), 0.5, rtol=0.02)


def test_curvature_variation_is_zero_on_a_plane_and_a_sphere_but_not_on_waves():
    v, f = icosphere(3, radius=0.5)
    lap, e = laplacian(f.numpy(), len(v), dtype=torch.float64), torch.tensor(edges(f.numpy()))
    sphere = losses.curvature_variation_loss(v, f, lap, e).item()
    wavy = v * (1.0 + 0.01 * torch.sin(20.0 * v[:, :1]))
    waves = losses.curvature_variation_loss(wavy, f, lap, e).item()
    assert sphere < 1e-3 * waves
    flat, ff = grid()
    ff = torch.tensor(ff)
    lap = laplacian(ff.numpy(), len(flat), dtype=torch.float64)
    assert losses.curvature_variation_loss(flat, ff, lap, torch.tensor(edges(ff.numpy()))).item(
    ) == pytest.approx(0.0, abs=1e-20)


def test_curvature_variation_gradient_flattens_a_bump():
    bumpy, f = grid(height=lambda x, y: 0.3 * np.exp(-((x - 4) ** 2 + (y - 4) ** 2)))
    f = torch.tensor(f)
    lap, e = laplacian(f.numpy(), len(bumpy), dtype=torch.float64), torch.tensor(edges(f.numpy()))
    v = bumpy.clone().requires_grad_()
    losses.curvature_variation_loss(v, f, lap, e).backward()
    assert torch.isfinite(v.grad).all()
    assert v.grad[4 * 9 + 4, 2] > 0  # a descent step lowers the bump's top


def _ring_viewpoints(elevation_deg: float, count: int = 8, distance: float = 5.0):
    azimuth = torch.arange(count, dtype=torch.float64) * (2 * np.pi / count)
    elevation = torch.tensor(np.radians(elevation_deg), dtype=torch.float64)
    return torch.stack([torch.cos(azimuth) * torch.cos(elevation),
                        torch.sin(azimuth) * torch.cos(elevation),
                        torch.sin(elevation).expand(count)], dim=1) * distance


def test_face_on_weights_free_a_flat_top_and_pin_the_outlines():
    from fit_scenes import box
    v, f = box(half=(0.8, 0.5, 0.1), subdivisions=3)
    v, f = torch.tensor(v), torch.tensor(f)
    views = torch.cat([_ring_viewpoints(15.0), _ring_viewpoints(-15.0)])
    weights = losses.face_on_weights(v, f, views, torch.zeros_like(views))
    top_inside = (v[:, 2] > 0.09) & (v[:, 0].abs() < 0.55) & (v[:, 1].abs() < 0.3)
    rim = (v[:, 2].abs() > 0.09) & ((v[:, 0].abs() > 0.79) | (v[:, 1].abs() > 0.49))
    assert top_inside.any() and rim.any()
    assert torch.all(weights[top_inside] == 1.0)  # seen at 15 degrees or more by all
    assert torch.all(weights[rim] == 0.0)  # a sharp edge: its faces turn both ways
    # a view from straight above sees the top face-on too; one level with it, edge-on
    level = losses.face_on_weights(v, f, _ring_viewpoints(0.0), torch.zeros(8, 3,
                                                                           dtype=v.dtype))
    assert torch.all(level[top_inside] == 0.0)
    # orthographic views: the direction alone counts
    down = torch.tensor([[0.0, 0.0, -1.0]], dtype=v.dtype)
    assert torch.all(losses.face_on_weights(v, f, torch.zeros(1, 3, dtype=v.dtype),
                                            down)[top_inside] == 1.0)


def test_the_unseen_area_moves_only_the_freed_vertices_and_pulls_a_bulge_in():
    v, f = icosphere(2)
    weights = torch.zeros(len(v), dtype=v.dtype)
    weights[:10] = 1.0
    v = v.clone().requires_grad_(True)
    losses.unseen_area_loss(v, f, weights).backward()
    moved = v.grad.norm(dim=1) > 0
    assert moved[:10].all() and not moved[10:].any()
    # on a sphere the area's gradient points outward: descending it pulls vertices in
    assert torch.all((v.grad[:10] * v.detach()[:10]).sum(dim=1) > 0)
    assert losses.unseen_area_loss(v, f, weights).item() == pytest.approx(
        float(losses.unseen_area_loss(v.detach(), f, torch.ones(len(v), dtype=v.dtype))))
