"""Soft rasterization on the CPU in pure torch; gradients come from autograd.

Instead of looping over faces per pixel, it lists every (face, pixel) pair whose
pixel lies in the face's cutoff-expanded box (`backend.render.binning`), evaluates the
SoftRas formulas on all pairs at once, drops the pairs under the cutoff, and
aggregates per pixel with index_add. Work is proportional to the pixels the faces
actually cover, not pixels x faces. The formulas match kernels/soft_raster.cu.
"""

from __future__ import annotations

import math

import torch

from .binning import enumerate_cells, pixel_boxes
from .renderer import signed_area2


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
        edges = edge_table(corners.detach()).index_select(0, pair_face)
        d2, closest, along, inside = closest_edges(pixel_centres(px, py, dtype), edges)
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

    # Barycentrics are affine in the pixel position: per-face planes, evaluated per pair.
    planes = barycentric_planes(face_screen, face_valid).reshape(B * F, 3, 3)
    plane = planes.index_select(0, pair_face)  # (P, 3, 3)
    raw = plane[..., 0] * centre[:, :1] + plane[..., 1] * centre[:, 1:] + plane[..., 2]
    clamped = raw.clamp_min(0.0)
    bary = clamped / clamped.sum(dim=-1, keepdim=True)  # clamped to [0, 1], renormalised
    z = face_screen[..., 2].reshape(B * F, 3).index_select(0, pair_face)
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


def edge_table(corners: torch.Tensor) -> torch.Tensor:
    """Per-face edge data (N, 3, 6) for `closest_edges`, from corners (N, 3, >=2).

    Edge k runs from corner k to corner k + 1: [start x, start y, direction x,
    direction y, 1 / |direction|^2, sign of the face's signed area].
    """
    start = corners[..., :2]
    direction = start.roll(-1, dims=1) - start
    inv_length2 = 1.0 / (direction * direction).sum(dim=-1).clamp_min(1e-20)
    orientation = torch.sign(signed_area2(corners))[:, None].expand(-1, 3)
    return torch.cat([start, direction, inv_length2[..., None], orientation[..., None]], -1)


def closest_edges(p: torch.Tensor, edges: torch.Tensor):
    """Where points p (P, 2) lie relative to triangles given by `edge_table` rows (P, 3, 6).

    Returns d2 (P,), the squared distance to the closest edge; closest (P,) int64,
    that edge's index k; along (P,), the closest point's parameter on it in [0, 1];
    inside (P,) bool.
    """
    rel_x = p[:, :1] - edges[..., 0]
    rel_y = p[:, 1:] - edges[..., 1]
    dir_x, dir_y = edges[..., 2], edges[..., 3]
    along = ((rel_x * dir_x + rel_y * dir_y) * edges[..., 4]).clamp_(0.0, 1.0)
    off_x = rel_x - along * dir_x
    off_y = rel_y - along * dir_y
    d2, closest = (off_x * off_x + off_y * off_y).min(dim=-1)
    inside = ((dir_x * rel_y - dir_y * rel_x) * edges[..., 5] > 0).all(dim=-1)
    return d2, closest, along.gather(1, closest[:, None])[:, 0], inside


def barycentric_planes(face_screen: torch.Tensor, face_valid: torch.Tensor) -> torch.Tensor:
    """Coefficients (..., 3, 3) with barycentric b_k(x, y) = c[k, 0] x + c[k, 1] y + c[k, 2].

    face_screen: (..., 3, >=2) corners; face_valid: (...) bool. b_k is the edge function
    of the edge opposite corner k (from corner k + 1 to k + 2) over twice the signed
    area. Invalid faces get finite values (their area is replaced by 1).
    """
    x, y = face_screen[..., 0], face_screen[..., 1]
    x1, y1 = x.roll(-1, dims=-1), y.roll(-1, dims=-1)
    x2, y2 = x.roll(-2, dims=-1), y.roll(-2, dims=-1)
    # E_k(p) = (x2 - x1)(p_y - y1) - (y2 - y1)(p_x - x1)
    coefficients = torch.stack([y1 - y2, x2 - x1, (y2 - y1) * x1 - (x2 - x1) * y1], dim=-1)
    area2 = signed_area2(face_screen)
    area2 = torch.where(face_valid, area2, torch.ones_like(area2))
    return coefficients / area2[..., None, None]
