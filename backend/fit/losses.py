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
from .mesh_ops import EdgeAdjacency


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

