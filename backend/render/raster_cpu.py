"""Soft rasterization on the CPU: compiled loops (Numba) with an analytic backward.

The same formulas as kernels/soft_raster.cu (see its header), organised by face
instead of by pixel, since a CPU core is fastest walking one face's pixels:

1. Candidates: per valid face and pixel row of its box (`backend.render.binning`),
   the span of columns whose centres may lie within the cutoff distance of the
   face (its extent within that distance of the row, widened by the distance): a
   tighter superset of the pairs with D >= cutoff than the whole box.
2. The forward pass tests every candidate, skips those with D below the cutoff
   (the only culling), and accumulates per pixel the log transparency and an
   online softmax over faces and the background.
3. The backward pass revisits the same pairs and accumulates the analytic
   gradients per face corner.

Cameras run in parallel on torch's thread count; within a camera faces go in
ascending order, so results are the same on any number of threads.

All arithmetic is float64 whatever the input dtype; the outputs and gradients are
returned in the input dtype. The compiled code is cached on disk by Numba (next to
this file, or in the user's cache folder where that is read-only), so only the
first run on a machine pays the few seconds of compilation.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

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
        B = face_valid.shape[0]
        corners = _float64(face_screen)
        colors = np.zeros((B, 1, 3, 3)) if face_colors is None else _float64(face_colors)
        boxes = _face_boxes(face_screen, face_valid, width, height, settings)
        ortho = orthographic.detach().cpu().numpy().astype(np.bool_)
        consts = _constants(settings)
        rgba = np.empty((B, height, width, 1 if face_colors is None else 4))
        aux = np.empty((B, height, width, 3))
        _per_camera(_forward_camera, corners, colors, boxes, ortho, consts, rgba, aux)
        ctx.saved = (corners, colors, boxes, ortho, consts, rgba, aux)
        ctx.dtypes = (face_screen.dtype, None if face_colors is None else face_colors.dtype)
        return torch.from_numpy(rgba).to(face_screen.dtype)

    @staticmethod
    def backward(ctx, grad_rgba):
        corners, colors, boxes, ortho, consts, rgba, aux = ctx.saved
        grad_screen = np.zeros_like(corners)
        grad_colors = np.zeros_like(colors)
        _per_camera(_backward_camera, corners, colors, boxes, ortho, consts, rgba, aux,
                    _float64(grad_rgba), grad_screen, grad_colors)
        screen_dtype, colors_dtype = ctx.dtypes
        grad_colors = None if colors_dtype is None else torch.from_numpy(grad_colors).to(
            colors_dtype)
        return (torch.from_numpy(grad_screen).to(screen_dtype), grad_colors,
                None, None, None, None, None)


def warm_up() -> None:
    """Compile (first run on a machine) or load from Numba's disk cache every pass, by
    rendering one triangle forward and backward, so a first fit does not wait for it."""
    screen = torch.tensor([[[[1.0, 1.0, 1.0], [6.0, 1.0, 1.0], [1.0, 6.0, 1.0]]]],
                          dtype=torch.float64, requires_grad=True)
    colors = torch.full((1, 1, 3, 3), 0.5, dtype=torch.float64, requires_grad=True)
    valid = torch.ones((1, 1), dtype=torch.bool)
    ortho = torch.zeros(1, dtype=torch.bool)
    for face_colors in (colors, None):
        image = rasterize_cpu(screen, face_colors, valid, ortho, 8, 8, RenderSettings())
        image.sum().backward()


def count_pairs(face_screen: torch.Tensor, face_valid: torch.Tensor, width: int, height: int,
                settings: RenderSettings) -> tuple[int, int]:
    """The work of one `rasterize_cpu` call: (candidate pairs, pairs kept).

    Candidates are the (face, pixel) pairs the passes enumerate (the faces' row
    spans); kept are those with D >= cutoff, which the passes shade.
    """
    counts = _count_pairs(_float64(face_screen),
                          _face_boxes(face_screen, face_valid, width, height, settings),
                          _constants(settings))
    return int(counts[0]), int(counts[1])


def _face_boxes(face_screen, face_valid, width, height, settings) -> np.ndarray:
    """(B, F, 4) int64 pixel boxes [x0, x1, y0, y1] (`backend.render.binning.pixel_boxes`);
    an invalid face or one outside the image gets no rows (y1 < y0)."""
    boxes = pixel_boxes(face_screen, settings.cutoff_distance, width, height)
    empty = ~face_valid | (boxes[..., 1] < boxes[..., 0])
    boxes[..., 3] = torch.where(empty, boxes[..., 2] - 1, boxes[..., 3])
    return boxes.cpu().numpy()


def _float64(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous float64 numpy copy (or view) of a CPU tensor, detached."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float64)


def _constants(settings: RenderSettings) -> np.ndarray:
    """(10,) float64: sigma, d2_cutoff, gamma, eps, near, far, background RGB, and the
    row spans' margin (the cutoff distance and `SPAN_SLACK`)."""
    return np.array([settings.sigma, settings.cutoff_distance2, settings.gamma,
                     settings.background_depth, settings.near, settings.far,
                     *settings.background_color, settings.cutoff_distance + SPAN_SLACK],
                    dtype=np.float64)


def _per_camera(function, corners, colors, boxes, ortho, consts, *images) -> None:
    """Run a compiled per-camera pass for every camera b, handing it camera b's slice
    of every array; ``consts`` goes whole.

    Cameras run in parallel on as many threads as torch uses (the backend's choice,
    `backend.core.threads`): the compiled passes release the GIL, and a pool hands
    out one camera at a time, which keeps the threads balanced when other processes
    hold some cores.
    """
    def run(b):
        function(corners[b], colors[b], boxes[b], ortho[b], consts, *(a[b] for a in images))

    threads = min(torch.get_num_threads(), len(ortho))
    if threads <= 1:
        for b in range(len(ortho)):
            run(b)
        return
    list(_thread_pool(threads).map(run, range(len(ortho))))  # list(): raise errors here


@functools.cache
def _thread_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="softras-cpu")


# ---------------------------------------------------------------------------
# Compiled parts, all float64. A face's corners c are (3, 3) rows [u, v, z]; its
# edge table (3, 3) rows [dx, dy, 1 / |d|^2] for edge k from corner k to k + 1.

# error_model="numpy": float division follows IEEE (no per-division zero check); the
# faces reaching the passes are valid, so no division by zero happens there.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
# Helpers called per pixel are inlined into their callers by Numba.
_inline = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")


@_inline
def _face_tables(c, edges, inv_z):
    """Fills the edge table and inv_z (3,) = 1 / z_k; returns A, twice the signed area."""
    for k in range(3):
        n = (k + 1) % 3
        dx, dy = c[n, 0] - c[k, 0], c[n, 1] - c[k, 1]
        length2 = dx * dx + dy * dy
        edges[k, 0], edges[k, 1] = dx, dy
        edges[k, 2] = 1.0 / length2 if length2 > 1e-20 else 0.0
        inv_z[k] = 1.0 / c[k, 2]
    return edges[0, 1] * edges[2, 0] - edges[0, 0] * edges[2, 1]  # (c1 - c0) x (c2 - c0)


@_inline
def _row_span(c, box, y, margin):
    """Columns (x0, x1) of pixel row y whose centres may lie within ``margin`` of
    triangle c: its extent within the band y + 0.5 +- margin, widened by the margin
    and clipped to box [x0, x1, y0, y1]; x0 > x1 when there are none."""
    lo, hi = np.inf, -np.inf
    y_lo, y_hi = y + 0.5 - margin, y + 0.5 + margin
    for k in range(3):
        xa, ya = c[k, 0], c[k, 1]
        if y_lo <= ya <= y_hi:
            lo, hi = min(lo, xa), max(hi, xa)
        xb, yb = c[(k + 1) % 3, 0], c[(k + 1) % 3, 1]
        for line in (y_lo, y_hi):
            if (ya - line) * (yb - line) < 0.0:  # the edge crosses the band's border
                x = xa + (line - ya) * (xb - xa) / (yb - ya)
                lo, hi = min(lo, x), max(hi, x)
    if lo > hi:
        return 1, 0
    return max(box[0], math.ceil(lo - margin - 0.5)), min(box[1], math.floor(hi + margin - 0.5))


@_inline
def _sample(c, edges, area2, px, py):
    """Pixel centre (px, py) against a face (corners c, edge table, A).

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
    inside = e0 * area2 > 0.0 and e1 * area2 > 0.0 and e2 * area2 > 0.0
    return inside, d2, closest, t, e0, e1, e2


@_inline
def _interpolate(c, inv_z, e0, e1, e2, inv_area2, ortho, b, beta):
    """Clamped, renormalised barycentrics into b (3,), perspective-correct weights into
    beta (3,). Returns (depth, S, 1 / R): S = sum_m b_m / z_m (1 when orthographic) and
    R the sum of the clamped raw barycentrics E_m / A."""
    b[0], b[1], b[2] = max(e0 * inv_area2, 0.0), max(e1 * inv_area2, 0.0), max(
        e2 * inv_area2, 0.0)
    raw_sum = b[0] + b[1] + b[2]
    inv_raw_sum = 1.0 / raw_sum
    for k in range(3):
        b[k] *= inv_raw_sum
    if ortho:
        for k in range(3):
            beta[k] = b[k]
        return b[0] * c[0, 2] + b[1] * c[1, 2] + b[2] * c[2, 2], 1.0, inv_raw_sum
    inv_depth = 0.0
    for k in range(3):
        beta[k] = b[k] * inv_z[k]
        inv_depth += beta[k]
    depth = 1.0 / inv_depth
    for k in range(3):
        beta[k] *= depth
    return depth, inv_depth, inv_raw_sum


@_inline
def _soft_coverage(inside, d2, sigma):
    """(D, 1 - D) of a pair, D = sigmoid(x) with x = +-d^2 / sigma, each to full
    relative precision (1 - D is not computed as a difference)."""
    decay = math.exp(-d2 / sigma)  # e^-|x|
    low, high = decay / (1.0 + decay), 1.0 / (1.0 + decay)
    return (high, low) if inside else (low, high)


@_jit
def _count_pairs(corners, boxes, consts):
    """(candidates, kept) over all cameras; see `count_pairs`."""
    d2_cutoff, margin = consts[1], consts[9]
    edges, inv_z = np.empty((3, 3)), np.empty(3)
    candidates = kept = 0
    for cam in range(corners.shape[0]):
        for face in range(corners.shape[1]):
            c, box = corners[cam, face], boxes[cam, face]
            if box[3] < box[2]:  # invalid, or outside the image
                continue
            area2 = _face_tables(c, edges, inv_z)
            for y in range(box[2], box[3] + 1):
                x0, x1 = _row_span(c, box, y, margin)
                candidates += max(x1 - x0 + 1, 0)
                for x in range(x0, x1 + 1):
                    inside, d2 = _sample(c, edges, area2, x + 0.5, y + 0.5)[:2]
                    if inside or d2 < d2_cutoff:
                        kept += 1
    return candidates, kept


@_jit
def _forward_camera(corners, colors, boxes, ortho, consts, rgba, aux):
    """The forward pass for one camera: corners and colors (F, 3, 3), boxes (F, 4),
    ortho bool, consts (`_constants`). Fills rgba (H, W, C) and aux (H, W, 3) =
    [transparency prod_j (1 - D_j), softmax maximum M, normaliser Z]."""
    H, W, channels = rgba.shape
    sigma, d2_cutoff, gamma, eps, near, far = consts[:6]
    depth_scale, margin = 1.0 / ((far - near) * gamma), consts[9]
    transparency = aux[..., 0]
    transparency[...] = 1.0
    if channels == 4:
        aux[..., 1] = eps / gamma
        aux[..., 2] = 1.0
        for ch in range(3):
            rgba[..., ch] = consts[6 + ch]
    edges, inv_z, b, beta = np.empty((3, 3)), np.empty(3), np.empty(3), np.empty(3)
    for face in range(len(corners)):
        c, col, box = corners[face], colors[face], boxes[face]
        if box[3] < box[2]:  # invalid, or outside the image
            continue
        area2 = _face_tables(c, edges, inv_z)
        inv_area2 = 1.0 / area2
        for y in range(box[2], box[3] + 1):
            x0, x1 = _row_span(c, box, y, margin)
            for x in range(x0, x1 + 1):
                inside, d2, _, _, e0, e1, e2 = _sample(c, edges, area2, x + 0.5, y + 0.5)
                if not (inside or d2 < d2_cutoff):
                    continue
                prob, one_minus = _soft_coverage(inside, d2, sigma)
                transparency[y, x] *= one_minus
                if channels == 1:
                    continue
                depth = _interpolate(c, inv_z, e0, e1, e2, inv_area2, ortho, b, beta)[0]
                score = (far - depth) * depth_scale
                peak = aux[y, x, 1]
                if score > peak:  # rescale the running sums to the new maximum
                    scale = math.exp(peak - score)
                    aux[y, x, 2] *= scale
                    for ch in range(3):
                        rgba[y, x, ch] *= scale
                    aux[y, x, 1] = peak = score
                weight = prob * math.exp(score - peak)
                aux[y, x, 2] += weight
                for ch in range(3):
                    rgba[y, x, ch] += weight * (
                        beta[0] * col[0, ch] + beta[1] * col[1, ch] + beta[2] * col[2, ch])
    rgba[..., channels - 1] = 1.0 - transparency
    if channels == 4:
        for ch in range(3):
            rgba[..., ch] /= aux[..., 2]


@_jit
def _backward_camera(corners, colors, boxes, ortho, consts, rgba, aux, grad_rgba, grad_screen,
                     grad_colors):
    """The backward pass for one camera (arrays as in `_forward_camera`): accumulates
    into grad_screen and grad_colors (F, 3, 3) the gradients of sum(grad_rgba * rgba),
    from the forward pass's rgba and aux."""
    channels = rgba.shape[2]
    sigma, d2_cutoff, margin = consts[0], consts[1], consts[9]
    edges, inv_z = np.empty((3, 3)), np.empty(3)
    b, beta, grad_beta, grad_b = np.empty(3), np.empty(3), np.empty(3), np.empty(3)
    grad_rgb = (0.0, 0.0, 0.0)
    for face in range(len(corners)):
        c, box, grad_corner = corners[face], boxes[face], grad_screen[face]
        col, grad_col = colors[face], grad_colors[face]
        if box[3] < box[2]:  # invalid, or outside the image
            continue
        area2 = _face_tables(c, edges, inv_z)
        inv_area2 = 1.0 / area2
        for y in range(box[2], box[3] + 1):
            x0, x1 = _row_span(c, box, y, margin)
            for x in range(x0, x1 + 1):
                grad_alpha = grad_rgba[y, x, channels - 1]
                if channels == 4:
                    grad_rgb = (grad_rgba[y, x, 0], grad_rgba[y, x, 1], grad_rgba[y, x, 2])
                color_grad = grad_rgb[0] != 0.0 or grad_rgb[1] != 0.0 or grad_rgb[2] != 0.0
                if grad_alpha == 0.0 and not color_grad:
                    continue
                inside, d2, k, t, e0, e1, e2 = _sample(c, edges, area2, x + 0.5, y + 0.5)
                if not (inside or d2 < d2_cutoff):
                    continue
                prob, one_minus = _soft_coverage(inside, d2, sigma)
                # d alpha / d x_j = (1 - alpha) D_j = prod_i (1 - D_i) D_j
                grad_x = grad_alpha * aux[y, x, 0] * prob
                if color_grad:  # dD_j / dx_j = D_j (1 - D_j)
                    grad_x += one_minus * _color_backward(
                        c, inv_z, col, ortho, consts, x + 0.5, y + 0.5, e0, e1, e2, inv_area2,
                        prob, (rgba[y, x, 0], rgba[y, x, 1], rgba[y, x, 2]), aux[y, x, 1],
                        aux[y, x, 2], grad_rgb, grad_corner, grad_col, b, beta, grad_beta, grad_b)
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
def _color_backward(c, inv_z, col, ortho, consts, px, py, e0, e1, e2, inv_area2, prob, out,
                    peak, total, grad_out, grad_corner, grad_col, b, beta, grad_beta, grad_b):
    """One pair's colour gradients: adds to grad_corner (3, 3) and grad_col (3, 3),
    returns D_j times d loss / d D_j through the softmax weight. out, grad_out: the
    pixel's RGB and its incoming gradient; peak, total: its softmax M and Z; b, beta,
    grad_beta, grad_b: (3,) scratch.

    dI/dD_j = e^(s_j - M) (C_j - I) / Z, dI/ds_j = w_j (C_j - I), dI/dC_j = w_j,
    w_j = D_j e^(s_j - M) / Z; then through the depth, beta and b to the corners.
    """
    depth_scale = 1.0 / ((consts[5] - consts[4]) * consts[2])
    depth, inv_depth, inv_raw_sum = _interpolate(c, inv_z, e0, e1, e2, inv_area2, ortho, b,
                                                 beta)
    along = 0.0
    for ch in range(3):
        face_color = beta[0] * col[0, ch] + beta[1] * col[1, ch] + beta[2] * col[2, ch]
        along += grad_out[ch] * (face_color - out[ch])
    weight = prob * math.exp((consts[5] - depth) * depth_scale - peak) / total
    grad_depth = -weight * along * depth_scale
    for k in range(3):
        grad_beta[k] = 0.0
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
            grad_u = (grad_beta[k] - mean) * depth - grad_depth * depth * depth
            grad_b[k] = grad_u * inv_z[k]
            grad_corner[k, 2] -= grad_u * b[k] * inv_z[k] * inv_z[k]
    # Through the clamp-and-renormalise to the raw barycentrics w_k = E_k / A.
    mean_b = grad_b[0] * b[0] + grad_b[1] * b[1] + grad_b[2] * b[2]
    grad_area = 0.0
    for k in range(3):
        raw = (e0, e1, e2)[k] * inv_area2
        grad_raw = (grad_b[k] - mean_b) * inv_raw_sum if raw > 0.0 else 0.0
        grad_edge = grad_raw * inv_area2
        grad_area -= grad_raw * raw * inv_area2
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
    return weight * along
