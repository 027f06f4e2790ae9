"""Soft rasterization on the CPU: compiled loops (Numba) with an analytic backward.

The same formulas as kernels/soft_raster.cu (see its header), organised by face
instead of by pixel, since a CPU core is fastest walking one face's pixels:

1. `row_spans` lists, per valid face and pixel row, the columns whose pixel centres
   may lie within the cutoff distance of the face (the face's footprint expanded by
   that distance, row by row; a tighter superset than the face's box).
2. The forward pass visits every pixel of every span, skips the pairs whose D is
   below the cutoff (the only culling), and accumulates per pixel the log
   transparency and an online softmax over faces and the background (per camera,
   faces in ascending order, so results do not depend on threads).
3. The backward pass revisits the same pairs and accumulates the analytic
   gradients per face corner.

All arithmetic is float64 whatever the input dtype; the outputs and gradients are
returned in the input dtype. The compiled code is cached on disk by Numba (next to
this file, or in the user's cache folder where that is read-only), so only the
first run on a machine pays the few seconds of compilation.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .binning import pixel_boxes
from .settings import RenderSettings

# Slack (pixels) added to each row span so rounding never drops a pair that the
# exact per-pixel test keeps.
SPAN_SLACK = 1e-6


def rasterize_cpu(
    face_screen: torch.Tensor,
    face_colors: torch.Tensor | None,
    face_valid: torch.Tensor,
    orthographic: torch.Tensor,
    width: int,
    height: int,
    settings: RenderSettings,
) -> torch.Tensor:
    """Soft-rasterize screen-space faces.

    face_screen: (B, F, 3, 3) float32/float64 [u, v, z] per corner, pixels and view depth.
    face_colors: (B, F, 3, 3) RGB per corner, or None for the silhouette only.
    face_valid: (B, F) bool, faces to rasterize.
    orthographic: (B,) bool.
    Returns (B, H, W, 4) RGBA, or (B, H, W, 1) alpha when face_colors is None, in
    face_screen's dtype; differentiable w.r.t. face_screen and face_colors.
    """
    return SoftRasterizeCpu.apply(face_screen, face_colors, face_valid, orthographic, width,
                                  height, settings)


class SoftRasterizeCpu(torch.autograd.Function):
    """`rasterize_cpu` as an autograd function around the compiled passes."""

    @staticmethod
    def forward(ctx, face_screen, face_colors, face_valid, orthographic, width, height,
                settings):
        corners = _float64(face_screen)
        colors = None if face_colors is None else _float64(face_colors)
        B, F = face_valid.shape
        spans = row_spans(face_screen, face_valid, width, height, settings)
        starts = np.searchsorted(spans[:, 0], np.arange(B + 1) * F)  # each camera's spans
        ortho = orthographic.detach().cpu().numpy().astype(np.bool_)
        consts = _constants(settings)
        channels = 1 if colors is None else 4
        rgba = np.empty((B, height, width, channels))
        aux = np.empty((B, height, width, 2))
        _use_torch_threads()
        _forward(corners, _or_empty(colors, B), ortho, spans, starts, consts, rgba, aux)
        ctx.saved = (corners, colors, ortho, spans, starts, consts, rgba, aux)
        ctx.dtypes = (face_screen.dtype, None if face_colors is None else face_colors.dtype)
        return torch.from_numpy(rgba).to(face_screen.dtype)

    @staticmethod
    def backward(ctx, grad_rgba):
        corners, colors, ortho, spans, starts, consts, rgba, aux = ctx.saved
        colors = _or_empty(colors, len(ortho))
        grad_screen = np.zeros_like(corners)
        grad_colors = np.zeros_like(colors)
        _use_torch_threads()
        _backward(corners, colors, ortho, spans, starts, consts, rgba, aux,
                  _float64(grad_rgba), grad_screen, grad_colors)
        screen_dtype, colors_dtype = ctx.dtypes
        grad_colors = None if colors_dtype is None else torch.from_numpy(grad_colors).to(
            colors_dtype)
        return (torch.from_numpy(grad_screen).to(screen_dtype), grad_colors,
                None, None, None, None, None)


def row_spans(face_screen: torch.Tensor, face_valid: torch.Tensor, width: int, height: int,
              settings: RenderSettings) -> np.ndarray:
    """The (face, pixel) pairs that may have D >= cutoff, as row spans.

    face_screen: (B, F, 3, >=2); face_valid: (B, F) bool.
    Returns (S, 4) int64 rows [b * F + f, y, x0, x1]: pixels x0..x1 (inclusive) of
    row y, camera b, may be within `RenderSettings.cutoff_distance` of face f.
    Rows ascend by face, then by y. Every pixel with D >= cutoff is listed.
    """
    B, F = face_valid.shape
    boxes = pixel_boxes(face_screen, settings.cutoff_distance, width, height).reshape(B * F, 4)
    faces = face_valid.reshape(-1).nonzero()[:, 0]
    boxes = boxes[faces]
    rows = (boxes[:, 3] - boxes[:, 2] + 1).clamp_min(0)
    rows *= boxes[:, 1] >= boxes[:, 0]
    xy = _float64(face_screen.detach()[..., :2]).reshape(B * F, 3, 2)
    return _row_spans(xy, faces.numpy(), boxes.numpy(), rows.numpy(),
                      settings.cutoff_distance + SPAN_SLACK)


def count_pairs(face_screen: torch.Tensor, face_valid: torch.Tensor, width: int, height: int,
                settings: RenderSettings) -> tuple[int, int]:
    """(candidate pairs enumerated by `row_spans`, pairs with D >= cutoff among them)."""
    spans = row_spans(face_screen, face_valid, width, height, settings)
    candidates = int((spans[:, 3] - spans[:, 2] + 1).sum())
    kept = _count_kept(_float64(face_screen), spans, settings.cutoff_distance2)
    return candidates, int(kept)


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float64)


def _or_empty(colors: np.ndarray | None, cameras: int) -> np.ndarray:
    """The kernels take an array either way; (B, 1, 3, 3) zeros stand for "no colours"."""
    return np.zeros((cameras, 1, 3, 3)) if colors is None else colors


def _use_torch_threads() -> None:
    """Run Numba's parallel loops on as many threads as torch's (the backend's choice,
    `backend.core.threads`)."""
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _constants(settings: RenderSettings) -> np.ndarray:
    """(9,) float64 [sigma, d2_cutoff, gamma, eps, near, far, background RGB]."""
    return np.array([settings.sigma, settings.cutoff_distance2, settings.gamma,
                     settings.background_depth, settings.near, settings.far,
                     *settings.background_color], dtype=np.float64)


# ---------------------------------------------------------------------------
# Compiled parts, all float64. A face's corners c are (3, 3) rows [u, v, z]; its
# edge table (3, 3) rows [dx, dy, 1 / |d|^2] for edge k from corner k to k + 1.

_jit = numba.njit(cache=True, nogil=True)
_parallel = numba.njit(cache=True, nogil=True, parallel=True)
# Helpers called per pixel are inlined where Numba compiles their callers: a call
# that passes array views costs reference counting, several times the arithmetic.
_inline = numba.njit(cache=True, nogil=True, inline="always")


@_jit
def _row_spans(xy, faces, boxes, rows, margin):
    """Row spans (see `row_spans`) of faces ``faces`` with pixel boxes ``boxes``."""
    spans = np.empty((rows.sum(), 4), dtype=np.int64)
    n = 0
    for i in range(len(faces)):
        c = xy[faces[i]]
        for y in range(boxes[i, 2], boxes[i, 2] + rows[i]):
            lo, hi = _band_extent(c, y + 0.5 - margin, y + 0.5 + margin)
            x0 = max(boxes[i, 0], math.ceil(lo - margin - 0.5))
            x1 = min(boxes[i, 1], math.floor(hi + margin - 0.5))
            if lo <= hi and x0 <= x1:
                spans[n, 0] = faces[i]
                spans[n, 1] = y
                spans[n, 2] = x0
                spans[n, 3] = x1
                n += 1
    return spans[:n].copy()


@_inline
def _band_extent(c, y_lo, y_hi):
    """x range (lo, hi) of triangle c (3, >=2) within the band y_lo <= y <= y_hi;
    lo > hi when they do not meet."""
    lo, hi = np.inf, -np.inf
    for k in range(3):
        xa, ya = c[k, 0], c[k, 1]
        if y_lo <= ya <= y_hi:
            lo, hi = min(lo, xa), max(hi, xa)
        xb, yb = c[(k + 1) % 3, 0], c[(k + 1) % 3, 1]
        for line in (y_lo, y_hi):
            if (ya - line) * (yb - line) < 0.0:  # the edge crosses the band's border
                x = xa + (line - ya) * (xb - xa) / (yb - ya)
                lo, hi = min(lo, x), max(hi, x)
    return lo, hi


@_inline
def _edge_table(c, edges):
    """Fills the edge table (3, 3) of corners c."""
    for k in range(3):
        n = (k + 1) % 3
        dx, dy = c[n, 0] - c[k, 0], c[n, 1] - c[k, 1]
        length2 = dx * dx + dy * dy
        edges[k, 0], edges[k, 1] = dx, dy
        edges[k, 2] = 1.0 / length2 if length2 > 1e-20 else 0.0


@_inline
def _sample(c, edges, px, py):
    """Pixel centre (px, py) against a face (corners c, `_edge_table` edges).

    Returns (inside, d2, k, t, E_0, E_1, E_2): d2 the squared distance to the
    closest edge k at parameter t in [0, 1]; E_m the edge function of the edge
    opposite corner m (twice the signed area of the triangle it makes with p).
    """
    d2, closest, t = np.inf, 0, 0.0
    e0 = e1 = e2 = 0.0
    for k in range(3):
        sx, sy = edges[k, 0], edges[k, 1]
        rx, ry = px - c[k, 0], py - c[k, 1]
        cross = sx * ry - sy * rx  # edge k is opposite corner k + 2
        if k == 0:
            e2 = cross
        elif k == 1:
            e0 = cross
        else:
            e1 = cross
        tk = min(max((rx * sx + ry * sy) * edges[k, 2], 0.0), 1.0)
        dx, dy = rx - tk * sx, ry - tk * sy
        dk = dx * dx + dy * dy
        if dk < d2:
            d2, closest, t = dk, k, tk
    area2 = e0 + e1 + e2
    inside = e0 * area2 > 0.0 and e1 * area2 > 0.0 and e2 * area2 > 0.0
    return inside, d2, closest, t, e0, e1, e2


@_inline
def _interpolate(c, e0, e1, e2, ortho, b, beta):
    """Clamped, renormalised barycentrics into b (3,), perspective-correct weights into
    beta (3,). Returns (depth, S) with S = sum_m b_m / z_m (1 when orthographic)."""
    area2 = e0 + e1 + e2
    b[0], b[1], b[2] = max(e0 / area2, 0.0), max(e1 / area2, 0.0), max(e2 / area2, 0.0)
    total = b[0] + b[1] + b[2]
    for k in range(3):
        b[k] /= total
    if ortho:
        for k in range(3):
            beta[k] = b[k]
        return b[0] * c[0, 2] + b[1] * c[1, 2] + b[2] * c[2, 2], 1.0
    inv_depth = 0.0
    for k in range(3):
        beta[k] = b[k] / c[k, 2]
        inv_depth += beta[k]
    for k in range(3):
        beta[k] /= inv_depth
    return 1.0 / inv_depth, inv_depth


@_inline
def _soft_coverage(inside, d2, sigma):
    """(x, D, log(1 - D)) of a pair: x = +-d^2 / sigma, D = sigmoid(x), without overflow."""
    x = (d2 if inside else -d2) / sigma
    decay = math.exp(-abs(x))
    prob = 1.0 / (1.0 + decay) if x >= 0.0 else decay / (1.0 + decay)
    return x, prob, -(max(x, 0.0) + math.log1p(decay))


@_jit
def _count_kept(corners, spans, d2_cutoff):
    F = corners.shape[1]
    edges = np.empty((3, 3))
    kept = 0
    for s in range(len(spans)):
        c = corners[spans[s, 0] // F, spans[s, 0] % F]
        _edge_table(c, edges)
        for x in range(spans[s, 2], spans[s, 3] + 1):
            inside, d2 = _sample(c, edges, x + 0.5, spans[s, 1] + 0.5)[:2]
            if inside or d2 < d2_cutoff:
                kept += 1
    return kept


@_parallel
def _forward(corners, colors, ortho, spans, starts, consts, rgba, aux):
    """Fills rgba (B, H, W, C) and aux (B, H, W, 2) = [softmax maximum M, normaliser Z];
    cameras in parallel, camera b's spans being spans[starts[b]:starts[b + 1]]."""
    for cam in numba.prange(len(ortho)):
        _forward_camera(corners[cam], colors[cam], ortho[cam], spans[starts[cam]:starts[cam + 1]],
                        consts, rgba[cam], aux[cam])


@_jit
def _forward_camera(corners, colors, ortho, spans, consts, rgba, aux):
    """`_forward` for one camera: corners and colors (F, 3, 3), rgba (H, W, C)."""
    H, W, channels = rgba.shape
    F = corners.shape[0]
    sigma, d2_cutoff, gamma, eps, near, far = consts[:6]
    log_t = np.zeros((H, W))
    if channels == 4:
        aux[..., 0] = eps / gamma
        aux[..., 1] = 1.0
        for ch in range(3):
            rgba[..., ch] = consts[6 + ch]
    edges, b, beta = np.empty((3, 3)), np.empty(3), np.empty(3)
    for s in range(len(spans)):
        face, y = spans[s, 0] % F, spans[s, 1]
        c, col = corners[face], colors[face]
        _edge_table(c, edges)
        for x in range(spans[s, 2], spans[s, 3] + 1):
            inside, d2, _, _, e0, e1, e2 = _sample(c, edges, x + 0.5, y + 0.5)
            if not (inside or d2 < d2_cutoff):
                continue
            _, prob, log_one_minus = _soft_coverage(inside, d2, sigma)
            log_t[y, x] += log_one_minus
            if channels == 1:
                continue
            depth = _interpolate(c, e0, e1, e2, ortho, b, beta)[0]
            score = (far - depth) / (far - near) / gamma
            peak = aux[y, x, 0]
            if score > peak:  # rescale the running sums to the new maximum
                scale = math.exp(peak - score)
                aux[y, x, 1] *= scale
                for ch in range(3):
                    rgba[y, x, ch] *= scale
                aux[y, x, 0] = peak = score
            weight = prob * math.exp(score - peak)
            aux[y, x, 1] += weight
            for ch in range(3):
                rgba[y, x, ch] += weight * (
                    beta[0] * col[0, ch] + beta[1] * col[1, ch] + beta[2] * col[2, ch])
    rgba[..., channels - 1] = -np.expm1(log_t)
    if channels == 4:
        for ch in range(3):
            rgba[..., ch] /= aux[..., 1]


@_parallel
def _backward(corners, colors, ortho, spans, starts, consts, rgba, aux, grad_rgba,
              grad_screen, grad_colors):
    """Accumulates into grad_screen and grad_colors (B, F, 3, 3) the gradients of
    sum(grad_rgba * rgba), from the forward pass's rgba and aux; cameras in parallel."""
    for cam in numba.prange(len(ortho)):
        _backward_camera(corners[cam], colors[cam], ortho[cam],
                         spans[starts[cam]:starts[cam + 1]], consts, rgba[cam], aux[cam],
                         grad_rgba[cam], grad_screen[cam], grad_colors[cam])


@_jit
def _backward_camera(corners, colors, ortho, spans, consts, rgba, aux, grad_rgba, grad_screen,
                     grad_colors):
    """`_backward` for one camera: (F, 3, 3) faces, (H, W, C) images."""
    channels = rgba.shape[2]
    F = corners.shape[0]
    sigma, d2_cutoff = consts[0], consts[1]
    edges = np.empty((3, 3))
    scratch = np.empty((4, 3))  # b, beta, grad_beta, grad_b of `_color_backward`
    for s in range(len(spans)):
        face, y = spans[s, 0] % F, spans[s, 1]
        c, grad_corner = corners[face], grad_screen[face]
        _edge_table(c, edges)
        for x in range(spans[s, 2], spans[s, 3] + 1):
            grad = grad_rgba[y, x]
            color_grad = channels == 4 and (grad[0] != 0.0 or grad[1] != 0.0 or grad[2] != 0.0)
            if grad[channels - 1] == 0.0 and not color_grad:
                continue
            inside, d2, k, t, e0, e1, e2 = _sample(c, edges, x + 0.5, y + 0.5)
            if not (inside or d2 < d2_cutoff):
                continue
            prob = _soft_coverage(inside, d2, sigma)[1]
            # d alpha / d x_j = (1 - alpha) D_j
            grad_x = grad[channels - 1] * (1.0 - rgba[y, x, channels - 1]) * prob
            if color_grad:
                grad_x += _color_backward(c, colors[face], ortho, consts, x + 0.5, y + 0.5,
                                          (e0, e1, e2), prob, rgba[y, x], aux[y, x], grad,
                                          grad_corner, grad_colors[face], scratch)
            # Through x = +-d^2 / sigma to the closest edge's end points: d^2 = |p - q|^2,
            # q = a + t (b - a)  =>  dd^2/da = -2 (p - q)(1 - t), dd^2/db = -2 (p - q) t.
            grad_d2 = (grad_x if inside else -grad_x) / sigma
            n = (k + 1) % 3
            dx = x + 0.5 - (c[k, 0] + t * edges[k, 0])
            dy = y + 0.5 - (c[k, 1] + t * edges[k, 1])
            grad_corner[k, 0] -= 2.0 * dx * (1.0 - t) * grad_d2
            grad_corner[k, 1] -= 2.0 * dy * (1.0 - t) * grad_d2
            grad_corner[n, 0] -= 2.0 * dx * t * grad_d2
            grad_corner[n, 1] -= 2.0 * dy * t * grad_d2


@_inline
def _color_backward(c, col, ortho, consts, px, py, edges, prob, out, aux, grad_out,
                    grad_corner, grad_col, scratch):
    """One pair's colour gradients: adds to grad_corner (3, 3) and grad_col (3, 3),
    returns d loss / d x_j through the softmax weight.

    dI/dD_j = e^(s_j - M) (C_j - I) / Z, dI/ds_j = w_j (C_j - I), dI/dC_j = w_j,
    w_j = D_j e^(s_j - M) / Z; then through the depth, beta and b to the corners.
    """
    gamma, near, far = consts[2], consts[4], consts[5]
    e, area2 = edges, edges[0] + edges[1] + edges[2]
    b, beta, grad_beta, grad_b = scratch[0], scratch[1], scratch[2], scratch[3]
    depth, inv_depth = _interpolate(c, e[0], e[1], e[2], ortho, b, beta)
    score = (far - depth) / (far - near) / gamma
    along = 0.0
    for ch in range(3):
        face_color = beta[0] * col[0, ch] + beta[1] * col[1, ch] + beta[2] * col[2, ch]
        along += grad_out[ch] * (face_color - out[ch])
    softmax_exp = math.exp(score - aux[0])
    weight = prob * softmax_exp / aux[1]
    grad_depth = -weight * along / gamma / (far - near)
    grad_beta[:] = 0.0
    for k in range(3):
        for ch in range(3):
            g = weight * grad_out[ch]
            grad_col[k, ch] += beta[k] * g
            grad_beta[k] += g * col[k, ch]
    # Through beta and the depth to b and the corner depths z_k.
    if ortho:
        for k in range(3):
            grad_b[k] = grad_beta[k] + grad_depth * c[k, 2]
            grad_corner[k, 2] += grad_depth * b[k]
    else:
        mean = grad_beta[0] * beta[0] + grad_beta[1] * beta[1] + grad_beta[2] * beta[2]
        for k in range(3):
            # u_k = b_k / z_k, beta_k = u_k / S, depth = 1 / S, S = sum u.
            grad_u = (grad_beta[k] - mean) / inv_depth - grad_depth / (inv_depth * inv_depth)
            grad_b[k] = grad_u / c[k, 2]
            grad_corner[k, 2] -= grad_u * b[k] / (c[k, 2] * c[k, 2])
    # Through the clamp-and-renormalise to the raw barycentrics w_k = E_k / A.
    raw_sum = 0.0
    for k in range(3):
        raw_sum += max(e[k] / area2, 0.0)
    mean_b = grad_b[0] * b[0] + grad_b[1] * b[1] + grad_b[2] * b[2]
    grad_area = 0.0
    for k in range(3):
        raw = e[k] / area2
        grad_raw = (grad_b[k] - mean_b) / raw_sum if raw > 0.0 else 0.0
        grad_edge = grad_raw / area2
        grad_area -= grad_raw * raw / area2
        # E_k = E(corner k+1, corner k+2, p): dE(a, b, p)/da = (b.y - p.y, p.x - b.x),
        # dE/db = (p.y - a.y, a.x - p.x).
        a, n = (k + 1) % 3, (k + 2) % 3
        grad_corner[a, 0] += grad_edge * (c[n, 1] - py)
        grad_corner[a, 1] += grad_edge * (px - c[n, 0])
        grad_corner[n, 0] += grad_edge * (py - c[a, 1])
        grad_corner[n, 1] += grad_edge * (c[a, 0] - px)
    # The area A = E(v0, v1, v2): dA/dv_k = (y_{k+1} - y_{k+2}, x_{k+2} - x_{k+1}).
    for k in range(3):
        a, n = (k + 1) % 3, (k + 2) % 3
        grad_corner[k, 0] += grad_area * (c[a, 1] - c[n, 1])
        grad_corner[k, 1] += grad_area * (c[n, 0] - c[a, 0])
    return softmax_exp * along / aux[1] * prob * (1.0 - prob)
