"""The fitter's loss terms, each a differentiable torch scalar.

Silhouette and colour terms compare renders with target images; the geometric
regularisers only look at the mesh. Geometric terms are averages (over vertices or
edges), so their weights hold across mesh resolutions; lengths are in the fitter's
normalised frame (the object about one unit across). Rows are picked with
`gather_faces` (index_select), whose backward pass is deterministic on the CPU.
"""

from __future__ import annotations

import torch

from ..render.screen_space import gather_faces
from .mesh_ops import EdgeAdjacency, vertex_normals


def silhouette_iou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft 1 - IoU per image, averaged over the batch.

    pred, target: (B, H, W) alpha in [0, 1]. Per image:
    ``1 - |A*T|_1 / |A + T - A*T|_1``; an image where both are empty counts as 0.
    """
    dims = tuple(range(1, pred.ndim))
    intersection = (pred * target).sum(dim=dims)
    union = (pred + target - pred * target).sum(dim=dims)
    return (1.0 - intersection / union.clamp_min(1e-6) - (union <= 1e-6).to(pred.dtype)).mean()


def hard_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU (B,) of the binary masks ``pred > threshold`` and ``target > threshold``.

    pred, target: (B, H, W). Two empty masks have IoU 1.
    """
    a = pred > threshold
    b = target > threshold
    intersection = (a & b).sum(dim=(1, 2)).double()
    union = (a | b).sum(dim=(1, 2)).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def color_l1_loss(pred_rgb: torch.Tensor, target_rgb: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute RGB difference inside the mask.

    pred_rgb, target_rgb: (B, H, W, 3); mask: (B, H, W) weights in [0, 1] (the target's
    silhouette). Returns 0 when the mask is empty.
    """
    weight = mask[..., None]
    total = weight.sum() * 3.0
    return (weight * (pred_rgb - target_rgb).abs()).sum() / total.clamp_min(1e-6)


def laplacian_loss(vertices: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """Mean over vertices of ``|(L v)_i|^2``, the squared distance of each vertex from the
    centroid of its neighbours (L: sparse (V, V) from `backend.fit.mesh_ops.laplacian`).

    vertices: (V, C), positions or any per-vertex field (the fitter passes the offsets
    from the initial mesh, which smooths the deformation rather than the shape).
    """
    delta = torch.sparse.mm(laplacian, vertices)
    return (delta * delta).sum(dim=1).mean()


def flatten_loss(vertices: torch.Tensor, adjacency: EdgeAdjacency) -> torch.Tensor:
    """Mean over interior edges of ``(cos(theta_e) + 1)^2``, theta_e the dihedral angle.

    theta_e is the angle between the two faces' altitudes onto the shared edge: pi
    (loss 0) for a flat pair, smaller as the surface folds (SoftRas' flatten loss,
    averaged instead of summed).
    """
    if len(adjacency.edge) == 0:
        return vertices.sum() * 0.0
    device = vertices.device
    edge = torch.as_tensor(adjacency.edge, device=device)
    opposite = torch.as_tensor(adjacency.opposite, device=device)
    v0, v1 = gather_faces(vertices, edge[:, 0]), gather_faces(vertices, edge[:, 1])
    a, b = gather_faces(vertices, opposite[:, 0]), gather_faces(vertices, opposite[:, 1])
    axis = v1 - v0
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def altitude(p):
        rel = p - v0
        return rel - (rel * axis).sum(dim=1, keepdim=True) * axis

    ha, hb = altitude(a), altitude(b)
    cos = (ha * hb).sum(dim=1) / (ha.norm(dim=1) * hb.norm(dim=1)).clamp_min(1e-12)
    return ((cos + 1.0) ** 2).mean()


def edge_length_loss(vertices: torch.Tensor, edges: torch.Tensor,
                     target_length: float) -> torch.Tensor:
    """Mean over edges of ``((|e| - target) / target)^2``: keeps edges near one length.

    edges: (E, 2) int64; target_length > 0 (the initial mesh's mean edge length).
    """
    length = (gather_faces(vertices, edges[:, 0]) - gather_faces(vertices, edges[:, 1])).norm(dim=1)
    return (((length - target_length) / target_length) ** 2).mean()


def normal_consistency_loss(vertices: torch.Tensor, faces: torch.Tensor,
                            adjacency: EdgeAdjacency) -> torch.Tensor:
    """Mean over interior edges of ``1 - cos`` of the angle between the two face normals
    (0 for a flat pair, 2 for a pair folded flat onto itself)."""
    if len(adjacency.edge) == 0:
        return vertices.sum() * 0.0
    a, b, c = (gather_faces(vertices, faces[:, k]) for k in range(3))
    normals = torch.cross(b - a, c - a, dim=1)
    normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pair = torch.as_tensor(adjacency.face_pair, device=vertices.device)
    cosine = (gather_faces(normals, pair[:, 0]) * gather_faces(normals, pair[:, 1])).sum(dim=1)
    return (1.0 - cosine).mean()



def mean_curvature(vertices: torch.Tensor, faces: torch.Tensor,
                   laplacian: torch.Tensor) -> torch.Tensor:
    """Signed mean curvature (V,) from the umbrella vector: ``2 (L v)_i . n_i / h_i^2``.

    vertices: (V, 3); faces: (F, 3) int64; laplacian: the sparse row-normalised uniform
    Laplacian (V, V) (`backend.fit.mesh_ops.laplacian`). n_i is the area-weighted vertex
    normal and h_i^2 the mean squared length of the edges at i, both held constant for
    the gradient (a vertex ring at distance h on a sphere of radius R sits h^2 / 2R off the
    tangent plane, hence the 2: curvature 1/R, in inverse units of the vertices).
    """
    a, b, c = (gather_faces(vertices, faces[:, k]) for k in range(3))
    with torch.no_grad():
        normal = vertex_normals(vertices, faces)
        # Each face's three edges, counted from both ends; (sum of squares, count) per vertex.
        sq = torch.stack([(b - a).square().sum(1), (c - b).square().sum(1),
                          (a - c).square().sum(1)], dim=1)  # (F, 3): edges ab, bc, ca
        ends = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        lengths = torch.cat([sq[:, 0], sq[:, 1], sq[:, 2]]).repeat(2)
        total = torch.zeros(len(vertices), dtype=vertices.dtype, device=vertices.device)
        total.index_add_(0, ends.T.reshape(-1), lengths)
        count = torch.zeros_like(total).index_add_(0, ends.T.reshape(-1),
                                                   torch.ones_like(lengths))
        h2 = (total / count.clamp_min(1)).clamp_min(1e-12)
    umbrella = torch.sparse.mm(laplacian, vertices)
    return 2.0 * (umbrella * normal).sum(dim=1) / h2


def curvature_variation_loss(vertices: torch.Tensor, faces: torch.Tensor,
                             laplacian: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mean over edges of ``((H_a - H_b) / |e|)^2``, H the mean curvature (`mean_curvature`):
    the squared gradient of the curvature, averaged over the surface.

    Zero on planes, spheres and cylinders alike, large on waves and bumps: it flattens a
    wavy flat top without rounding a uniformly curved body. edges: (E, 2) int64; the
    edge lengths are held constant for the gradient (the loss would otherwise lengthen
    edges). In inverse length^4 of the vertices' units.
    """
    curvature = mean_curvature(vertices, faces, laplacian)
    with torch.no_grad():
        length2 = (gather_faces(vertices, edges[:, 0]) - gather_faces(vertices, edges[:, 1]))
        length2 = length2.square().sum(dim=1).clamp_min(1e-12)
    diff = gather_faces(curvature[:, None], edges[:, 0]) - gather_faces(curvature[:, None],
                                                                         edges[:, 1])
    return (diff[:, 0].square() / length2).mean()


def face_on_weights(vertices: torch.Tensor, faces: torch.Tensor, viewpoints: torch.Tensor,
                    directions: torch.Tensor, edge_on: float = 0.1, face_on: float = 0.2
                    ) -> torch.Tensor:
    """(V,) in [0, 1]: 0 for a vertex on or near a view's contour, rising to 1 for one
    that every view sees at least ``face_on`` from edge-on (a table's top between views
    from above and below: no silhouette moves with it).

    A view's contour passes through a vertex when its faces turn both toward and away
    from the camera (a sharp edge too), or near it when one of its faces is within
    ``edge_on`` of edge-on (|cos| of the angle between the face normal and the ray).
    vertices: (V, 3); faces: (F, 3) int64; viewpoints: (C, 3) camera centres;
    directions: (C, 3) the viewing direction of orthographic cameras, zero rows for
    perspective ones (whose ray runs from the centre to the face). No gradient.
    """
    with torch.no_grad():
        v = gather_faces(vertices, faces)
        # face normals averaged over their corners' rings: a wave a few edges wide whose
        # single faces turn away from a view is not a contour; a sharp edge still is
        normals = gather_faces(vertex_normals(vertices, faces), faces).sum(dim=1)
        normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
        rays = v.mean(dim=1)[:, None, :] - viewpoints[None, :, :]  # (F, C, 3)
        parallel = directions.norm(dim=1) > 0
        rays = torch.where(parallel[None, :, None], directions[None].expand_as(rays), rays)
        rays = rays / rays.norm(dim=2, keepdim=True).clamp_min(1e-12)
        facing = torch.einsum("fi,fci->fc", normals, rays).repeat_interleave(3, dim=0)
        corners = faces.reshape(-1, 1).expand(-1, facing.shape[1])
        empty = torch.zeros(len(vertices), facing.shape[1], dtype=facing.dtype,
                            device=facing.device)
        lowest = empty.scatter_reduce(0, corners, facing, "amin", include_self=False)
        highest = empty.scatter_reduce(0, corners, facing, "amax", include_self=False)
        straddles = (lowest < 0) & (highest > 0)
        nearest = torch.where(straddles, torch.zeros_like(lowest),
                              torch.minimum(lowest.abs(), highest.abs()))
        cosine = nearest.amin(dim=1)
        return ((cosine - edge_on) / (face_on - edge_on)).clamp(0.0, 1.0)


def unseen_area_loss(vertices: torch.Tensor, faces: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """The surface's total area, moved only through the vertices ``weights`` (V,) frees
    (each vertex's gradient scaled by its weight, from `face_on_weights`): a membrane
    that flattens what the silhouettes cannot see (waves on a flat top) toward the least
    surface spanning what they do, without pulling on their outlines."""
    still = vertices.detach()
    moved = still + weights[:, None] * (vertices - still)
    v = gather_faces(moved, faces)
    return 0.5 * torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=1).sum()
