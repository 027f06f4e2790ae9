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

    boxes = pixel_boxes(face_screen, settings.cutoff_distance, width, height).reshape(B * F, 4)
    valid_faces = face_valid.reshape(-1).nonzero()[:, 0]
    owner, px, py = enumerate_cells(boxes[valid_faces])
    pair_face = valid_faces[owner]  # index into the flattened (B * F) faces
    camera = pair_face // F
    tri = face_screen.reshape(B * F, 3, 3)[pair_face]  # (P, 3, 3)
    p = torch.stack([px, py], dim=-1).to(dtype) + 0.5  # pixel centres (P, 2)

    d2 = squared_distance_to_triangle(p, tri[..., :2])
    edge = edge_functions(p, tri[..., :2])  # (P, 3), un-normalised barycentrics
    area2 = edge.sum(dim=-1)
    inside = ((edge * area2[:, None]) > 0).all(dim=-1)
    # D >= cutoff  <=>  inside or d^2 < sigma * ln(1/cutoff - 1): the only culling.
    keep = inside | (d2.detach() < settings.sigma * math.log(1.0 / settings.cutoff - 1.0))
    d2, edge, area2, inside = d2[keep], edge[keep], area2[keep], inside[keep]
    tri, camera, pair_face = tri[keep], camera[keep], pair_face[keep]
    pixel = (camera * height + py[keep]) * width + px[keep]

    x = torch.where(inside, d2, -d2) / settings.sigma
    prob = torch.sigmoid(x)  # D_j
    log_transparency = torch.zeros(n_pixels, dtype=dtype, device=device).index_add(
        0, pixel, torch.nn.functional.logsigmoid(-x)
    )
    alpha = -torch.expm1(log_transparency)  # 1 - prod_j (1 - D_j)
    if face_colors is None:
        return alpha.reshape(B, height, width, 1)

    bary = clamped_barycentrics(edge, area2)
    z = tri[..., 2]
    ortho = orthographic[camera]
    # Perspective-correct weights beta_k = (b_k / z_k) / sum_m (b_m / z_m); linear if ortho.
    over_z = torch.where(ortho[:, None], bary, bary / z)
    inv_depth_sum = over_z.sum(dim=-1)
    beta = over_z / inv_depth_sum[:, None]
    depth = torch.where(ortho, (bary * z).sum(dim=-1), 1.0 / inv_depth_sum)
    znorm = (settings.far - depth) / (settings.far - settings.near)  # nearer = larger
    color = (beta[..., None] * face_colors.reshape(B * F, 3, 3)[pair_face]).sum(dim=-2)

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


def edge_functions(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Un-normalised barycentrics (P, 3): E_k = edge function of the edge opposite k.

    p: (P, 2) points; tri: (P, 3, 2) corners. ``E.sum(-1)`` is twice the signed area,
    and ``E / E.sum(-1)`` are the barycentric coordinates of p.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]

    def edge(s, t):
        return (t[:, 0] - s[:, 0]) * (p[:, 1] - s[:, 1]) - (t[:, 1] - s[:, 1]) * (p[:, 0] - s[:, 0])

    return torch.stack([edge(b, c), edge(c, a), edge(a, b)], dim=-1)


def clamped_barycentrics(edge: torch.Tensor, area2: torch.Tensor) -> torch.Tensor:
    """Barycentrics clamped to [0, 1] and renormalised to sum to 1, (P, 3)."""
    clamped = (edge / area2[:, None]).clamp_min(0.0)
    return clamped / clamped.sum(dim=-1, keepdim=True)


def squared_distance_to_triangle(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Squared distance (P,) from points p (P, 2) to the edges of triangles (P, 3, 2)."""
    start = tri
    end = tri.roll(-1, dims=1)
    seg = end - start  # (P, 3, 2)
    rel = p[:, None, :] - start
    length2 = (seg * seg).sum(dim=-1)
    t = ((rel * seg).sum(dim=-1) / length2.clamp_min(1e-20)).clamp(0.0, 1.0)
    diff = rel - t[..., None] * seg
    return (diff * diff).sum(dim=-1).amin(dim=-1)
