"""Soft rasterization on the CPU in pure torch; gradients come from autograd.

Instead of looping over faces per pixel, it lists every (face, pixel) pair whose
pixel lies in the face's cutoff-expanded box (`backend.binning`), evaluates the
SoftRas formulas on all pairs at once, drops the pairs under the cutoff, and
aggregates per pixel with index_add. Work is proportional to the pixels the faces
actually cover, not pixels x faces. The formulas match kernels/soft_raster.cu.
"""

from __future__ import annotations

import math

import torch

from .binning import enumerate_cells, pixel_boxes


def rasterize_cpu(
    face_screen: torch.Tensor,
    face_colors: torch.Tensor | None,
    face_valid: torch.Tensor,
    orthographic: torch.Tensor,
    width: int,
    height: int,
    settings,
) -> torch.Tensor:
    """Soft-rasterize screen-space faces.

    face_screen: (B, F, 3, 3) [u, v, z] per corner, pixels and view depth.
    face_colors: (B, F, 3, 3) RGB per corner, or None for the silhouette only.
    face_valid: (B, F) bool, faces to rasterize.
    orthographic: (B,) bool.
    Returns (B, H, W, 4) RGBA, or (B, H, W, 1) alpha when face_colors is None.
    """
    B, F = face_valid.shape
    dtype, device = face_screen.dtype, face_screen.device
    n_pixels = B * height * width

    # Candidate pairs from the boxes, then the exact cutoff test without autograd:
    # D >= cutoff  <=>  inside or d^2 < sigma * ln(1/cutoff - 1), the only culling.
    corners = face_screen.reshape(B * F, 3, 3)
    boxes = pixel_boxes(face_screen, settings.cutoff_distance, width, height).reshape(B * F, 4)
    valid_faces = face_valid.reshape(-1).nonzero()[:, 0]
    owner, px, py = enumerate_cells(boxes[valid_faces])
    pair_face = valid_faces[owner]  # index into the flattened (B * F) faces
    with torch.no_grad():
        d2, closest, along, inside = closest_edges(
            pixel_centres(px, py, dtype), corners.detach().index_select(0, pair_face))
        keep = (inside | (d2 < settings.sigma * math.log(1.0 / settings.cutoff - 1.0)))
        keep = keep.nonzero()[:, 0]
    pair_face, px, py = pair_face[keep], px[keep], py[keep]
    closest, along, inside = closest[keep], along[keep], inside[keep]
    camera = pair_face // F
    pixel = (camera * height + py) * width + px
    centre = pixel_centres(px, py, dtype)

    # The kept pairs again, now differentiable. d^2 = |p - q|^2 with q the closest
    # point of the closest edge; its parameter is held fixed, which leaves the
    # gradient unchanged (it is optimal, or clamped at an end of the edge).
    flat_corners = face_screen.reshape(B * F * 3, 3)[:, :2]
    start = flat_corners.index_select(0, pair_face * 3 + closest)
    end = flat_corners.index_select(0, pair_face * 3 + (closest + 1) % 3)
    offset = centre - torch.lerp(start, end, along[:, None])
    d2 = (offset * offset).sum(dim=-1)
    x = torch.where(inside, d2, -d2) / settings.sigma
    prob = torch.sigmoid(x)  # D_j
    log_transparency = torch.zeros(n_pixels, dtype=dtype, device=device).index_add(
        0, pixel, torch.nn.functional.logsigmoid(-x)
    )
    alpha = -torch.expm1(log_transparency)  # 1 - prod_j (1 - D_j)
    if face_colors is None:
        return alpha.reshape(B, height, width, 1)

    tri = corners.index_select(0, pair_face)  # (P, 3, 3)
    edge = edge_functions(centre, tri)
    area2 = edge.sum(dim=-1)
    bary = clamped_barycentrics(edge, area2)
    z = tri[..., 2]
    ortho = orthographic[camera]
    # Perspective-correct weights beta_k = (b_k / z_k) / sum_m (b_m / z_m); linear if ortho.
    over_z = torch.where(ortho[:, None], bary, bary / z)
    inv_depth_sum = over_z.sum(dim=-1)
    beta = over_z / inv_depth_sum[:, None]
    depth = torch.where(ortho, (bary * z).sum(dim=-1), 1.0 / inv_depth_sum)
    znorm = (settings.far - depth) / (settings.far - settings.near)  # nearer = larger
    color = (beta[..., None] * face_colors.reshape(B * F, 3, 3).index_select(0, pair_face)).sum(-2)

    # Softmax over faces and the background, stabilised by the per-pixel maximum M.
    score = znorm / settings.gamma
    eps_score = settings.background_depth / settings.gamma
    with torch.no_grad():
        peak = torch.full((n_pixels,), eps_score, dtype=dtype, device=device)
        peak = peak.scatter_reduce(0, pixel, score, reduce="amax")
    weight = prob * torch.exp(score - peak[pixel])
    background_weight = torch.exp(eps_score - peak)
    total = background_weight.index_add(0, pixel, weight)
    background = torch.tensor(settings.background_color, dtype=dtype, device=device)
    numerator = (background_weight[:, None] * background).index_add(
        0, pixel, weight[:, None] * color
    )
    rgb = numerator / total[:, None]
    return torch.cat([rgb, alpha[:, None]], dim=-1).reshape(B, height, width, 4)


def pixel_centres(px: torch.Tensor, py: torch.Tensor, dtype) -> torch.Tensor:
    """(P, 2) centres of pixels with integer indices px, py (P,)."""
    return torch.stack([px, py], dim=-1).to(dtype) + 0.5


def closest_edges(p: torch.Tensor, tri: torch.Tensor):
    """Where points p (P, 2) lie relative to triangles tri (P, 3, >=2).

    Returns d2 (P,), the squared distance to the closest edge; closest (P,) int64,
    that edge's index k (it runs from corner k to corner k + 1); along (P,), the
    closest point's parameter on it in [0, 1]; inside (P,) bool.
    """
    start = tri[..., :2]
    direction = start.roll(-1, dims=1) - start  # (P, 3, 2)
    rel = p[:, None, :] - start
    length2 = (direction * direction).sum(dim=-1).clamp_min(1e-20)
    along = ((rel * direction).sum(dim=-1) / length2).clamp(0.0, 1.0)
    offset = rel - along[..., None] * direction
    d2, closest = (offset * offset).sum(dim=-1).min(dim=-1)
    cross = direction[..., 0] * rel[..., 1] - direction[..., 1] * rel[..., 0]
    inside = (cross * cross.sum(dim=-1, keepdim=True) > 0).all(dim=-1)
    return d2, closest, along.gather(1, closest[:, None])[:, 0], inside


def edge_functions(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Un-normalised barycentrics (P, 3) of points p (P, 2) in triangles tri (P, 3, >=2).

    E_k is the edge function of the edge opposite corner k; ``E.sum(-1)`` is twice
    the signed area and ``E / E.sum(-1)`` are the barycentric coordinates of p.
    """
    x, y = tri[..., 0], tri[..., 1]
    # Edge function of corner k's opposite edge, from corner k + 1 to corner k + 2.
    x1, y1 = x.roll(-1, dims=1), y.roll(-1, dims=1)
    x2, y2 = x.roll(-2, dims=1), y.roll(-2, dims=1)
    return (x2 - x1) * (p[:, 1:2] - y1) - (y2 - y1) * (p[:, 0:1] - x1)


def clamped_barycentrics(edge: torch.Tensor, area2: torch.Tensor) -> torch.Tensor:
    """Barycentrics clamped to [0, 1] and renormalised to sum to 1, (P, 3)."""
    clamped = (edge / area2[:, None]).clamp_min(0.0)
    return clamped / clamped.sum(dim=-1, keepdim=True)
