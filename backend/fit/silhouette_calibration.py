"""Camera corrections from the silhouettes alone, before any mesh: epipolar tangencies.

Two perspective views i and j of one object share a pencil of planes through both
camera centres (epipolar planes). The two planes of the pencil that just touch the
object touch it at frontier points, which are on the occluding contour of both views.
In the images: the two lines from the epipole e_ij (camera j's centre seen by view i)
tangent to silhouette i are the images of those planes, and so are the two lines from
e_ji tangent to silhouette j. With exact cameras the tangent point of silhouette j lies
on the epipolar line of the matching tangent point of silhouette i; with wrong cameras
it lies off it, by a distance in pixels that measures the error and needs no shape
(Wong and Cipolla 2001; Sinha, Pollefeys and McMillan 2004; Boyer 2006).

Why before the fit: fitted jointly, the mesh bends to explain cameras a few tenths of a
pixel off and the joint problem stops in that minimum (docs/benchmarks.md, "Why the
pose gap stays"). Frontier points constrain the cameras with nothing that can bend, so
`calibrate` solves them first; the fit then starts from the corrected cameras (and a
visual hull carved with them) and refines them further.

The corrections have the parametrisation and the gauge of `backend.fit.camera_refine`:
per view, a rotation ``w`` (radians) about the camera's centre and a shift ``t`` (here
in scene units), ``world_to_camera' = world_to_camera @ D(w, t)``, with the 7 (for
perspective cameras) similarity modes projected out, about the point the cameras look
at. Solved by Gauss-Newton with Levenberg-Marquardt damping and Huber weights; the
tangent points are chosen again at every step (they slide along the contour as the
epipoles move). Last, the corrected cameras are moved together by the similarity that
puts a ball standing for the object back where the given cameras put it
(`backend.core.similarity.keep_reconstruction`): the projection alone keeps the
corrections' mean in their own metric, not the object's place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.spatial import ConvexHull, QhullError

from ..core.camera import CameraMatrices, camera_centres, nearest_point_to_axes
from ..core.options import FitOptions
from ..core.similarity import ball_points, keep_reconstruction
from .camera_refine import MIN_REFINED_VIEWS, correction_matrices, gauge_basis
from .inputs import Prepared

# A view's silhouette that touches the image border is cut off: its tangents are not
# the object's. Such views take no part (they are still refined by the fit).
BORDER_PX = 1
# Residuals past this many pixels (at the views' resolution) count linearly (Huber).
HUBER_PX = 1.0
# A correction of 1 radian (or 1 camera distance) costs this fraction of the focal
# length in pixels. The tangencies barely see some directions (a turn of a camera and
# the sideways move that keeps the object's centre in place differ only by parallax):
# the prior keeps those near the given cameras instead of fitting contour noise. On
# the 24-view benchmark rigs, 0.05 / 0.1 / 0.2 left 0.15 / 0.18 / 0.23 px of
# silhouette error of a 2.9 px miscalibration and moved exact cameras by 0.12 / 0.08 /
# 0.06 px (docs/benchmarks.md, "Cameras from epipolar tangencies").
PRIOR = 0.1
# Tangencies that already agree this well (RMS, px) leave the cameras as given: what
# is left is contour noise (about 0.1 px on 16-sample Cycles renders), not calibration.
AGREEING_RMS_PX = 0.3
# ... or when the solve lowers the RMS less than this many times: fitting contour noise
# lowers it 1.5-2x (exact cameras: 0.11 -> 0.07 px, 0.15 -> 0.07 px), a 1.5 degree
# miscalibration 25-70x, the temple photos' 2.45 px 30x.
MIN_RMS_DROP = 4.0


@dataclass
class Calibration:
    """What `calibrate` found. corrections: (N, 4, 4) float64 world matrices D (views
    that took no part move only with the gauge: the cameras' common similarity is
    removed over all of them); rms_before / rms_after: RMS tangency residual (px);
    pairs: tangent pairs used at the end; used: views that took part; steps: accepted
    Gauss-Newton steps."""

    corrections: np.ndarray
    rms_before: float
    rms_after: float
    pairs: int
    used: list[int]
    steps: int


def contour_hull(alpha: np.ndarray) -> np.ndarray | None:
    """Convex hull (K, 2) float64, counter-clockwise in pixel coordinates (u right, v
    down; pixel (r, c) centred at (c + 0.5, r + 0.5)), of the sub-pixel 0.5 level line of
    ``alpha`` (H, W); None if the silhouette is empty or touches the border."""
    inside = alpha >= 0.5
    if not inside.any() or _touches_border(inside):
        return None
    a, b = alpha[:, :-1], alpha[:, 1:]
    r, c = np.nonzero((a - 0.5) * (b - 0.5) < 0)
    row_pts = np.stack([c + 0.5 + (0.5 - a[r, c]) / (b[r, c] - a[r, c]), r + 0.5], axis=1)
    a, b = alpha[:-1], alpha[1:]
    r, c = np.nonzero((a - 0.5) * (b - 0.5) < 0)
    col_pts = np.stack([c + 0.5, r + 0.5 + (0.5 - a[r, c]) / (b[r, c] - a[r, c])], axis=1)
    points = np.concatenate([row_pts, col_pts])
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return None
    return points[hull.vertices]


def _touches_border(inside: np.ndarray) -> bool:
    k = BORDER_PX
    return bool(inside[:k].any() or inside[-k:].any() or inside[:, :k].any()
                or inside[:, -k:].any())


def tangent_indices(hull: np.ndarray, epipole: np.ndarray) -> tuple[int, int] | None:
    """The two hull vertices (indices into ``hull`` (K, 2)) whose lines through the
    homogeneous point ``epipole`` (3,) leave the whole hull on one side; None when the
    epipole is inside the hull. Projective: works for an epipole at infinity."""
    found, ok = tangents_from(hull, epipole[None])
    return (int(found[0, 0]), int(found[0, 1])) if ok[0] else None


def tangents_from(hull: np.ndarray, epipoles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`tangent_indices` for many homogeneous points ``epipoles`` (M, 3) at once:
    (indices (M, 2) int, ok (M,) bool, False where a point has no two tangents)."""
    pts = _homogeneous(hull)
    lines = np.cross(epipoles[:, None, :], pts[None, :, :])
    prev = np.einsum("mki,ki->mk", lines, np.roll(pts, 1, axis=0))
    nxt = np.einsum("mki,ki->mk", lines, np.roll(pts, -1, axis=0))
    tangent = prev * nxt > 0
    # the first two tangent vertices in hull order (stable sort puts True first)
    return np.argsort(~tangent, axis=1, kind="stable")[:, :2], tangent.sum(axis=1) == 2


@dataclass
class _Rig:
    """The perspective cameras being calibrated, float64, world frame.

    intrinsics: (N, 3, 3); poses: (N, 4, 4) world_to_camera; centers: (N, 3) camera
    centres; distances: (N,) to the point the cameras look at; gauge: (6N, 7)
    orthonormal similarity modes of the raw parameters (per view [w, t / d]).
    """

    intrinsics: np.ndarray
    poses: np.ndarray
    centers: np.ndarray
    distances: np.ndarray
    gauge: np.ndarray

    @staticmethod
    def of(cameras: Sequence[CameraMatrices]) -> _Rig:
        poses = np.stack([c.world_to_camera for c in cameras]).astype(np.float64)
        centers = camera_centres(poses)
        looked_at = nearest_point_to_axes(centers, poses[:, 2, :3])
        if looked_at is None:
            raise ValueError("the cameras look in parallel: no point they all look at to "
                             "measure their distances from")
        distances = np.linalg.norm(centers - looked_at, axis=1)
        gauge = gauge_basis(centers - looked_at, distances, perspective=True)
        intrinsics = np.stack([c.intrinsics for c in cameras]).astype(np.float64)
        return _Rig(intrinsics, poses, centers, distances, gauge)

    def project(self, flat: np.ndarray) -> np.ndarray:
        """(6N,) raw parameters without their gauge part."""
        return flat - self.gauge @ (self.gauge.T @ flat)

    def corrections(self, raw: np.ndarray) -> np.ndarray:
        """(N, 4, 4) world corrections D of raw parameters (N, 6) (no gauge projection)."""
        as_t = torch.from_numpy
        return correction_matrices(as_t(raw[:, :3]), as_t(raw[:, 3:] * self.distances[:, None]),
                                   as_t(self.centers)).numpy()

    def corrected(self, raw: np.ndarray) -> _Views:
        """The cameras moved by raw parameters (N, 6)."""
        poses = self.poses @ self.corrections(raw)
        rotation = poses[:, :3, :3]
        return _Views(self.intrinsics @ poses[:, :3, :], camera_centres(poses),
                      np.linalg.inv(self.intrinsics @ rotation))


@dataclass
class _Views:
    """Cameras as the tangencies use them: projection (N, 3, 4), centers (N, 3) and rays
    (N, 3, 3), the inverse of K R (a homogeneous pixel to a world ray direction)."""

    projection: np.ndarray
    centers: np.ndarray
    rays: np.ndarray


@dataclass
class _Tangencies:
    """Matched tangent points, one row per residual: the tangent point ``source`` (M, 2)
    of view ``src`` (M,) whose epipolar line in view ``dst`` (M,) should pass through
    ``target`` (M, 2), the matching tangent point there."""

    src: np.ndarray
    dst: np.ndarray
    source: np.ndarray
    target: np.ndarray


def _homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)


def select_tangencies(hulls: Sequence[np.ndarray | None], views: _Views) -> _Tangencies:
    """Every view pair's epipolar tangent points at the cameras ``views``, matched.

    hulls: per view `contour_hull` or None. The two tangents of view i and of view j
    are matched by their epipolar planes' normals; each matched pair gives a residual
    both ways.
    """
    usable = np.array([i for i, h in enumerate(hulls) if h is not None], dtype=int)
    if len(usable) < 2:
        return _Tangencies(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 2)),
                           np.zeros((0, 2)))
    centers = _homogeneous(views.centers[usable])
    points, ok = [], []
    for i in usable:  # the tangent points in view i from every usable view's epipole
        found, found_ok = tangents_from(hulls[i], centers @ views.projection[i].T)
        points.append(hulls[i][found])
        ok.append(found_ok)
    points, ok = np.stack(points), np.stack(ok)  # (U, U, 2, 2): [in view a, from view b]
    first, second = np.triu_indices(len(usable), k=1)
    keep = ok[first, second] & ok[second, first]
    first, second = first[keep], second[keep]
    src, dst = usable[first], usable[second]
    pi, pj = points[first, second], points[second, first].copy()
    baseline = (views.centers[dst] - views.centers[src])[:, None, :]
    ni = _unit(np.cross(baseline, np.einsum("pij,pkj->pki", views.rays[src], _homogeneous(pi))))
    nj = _unit(np.cross(baseline, np.einsum("pij,pkj->pki", views.rays[dst], _homogeneous(pj))))
    cos = np.abs(np.einsum("pai,pbi->pab", ni, nj))
    swap = cos[:, 0, 0] + cos[:, 1, 1] < cos[:, 0, 1] + cos[:, 1, 0]
    pj[swap] = pj[swap][:, ::-1]
    # rows: for each pair and tangent, i -> j then j -> i
    src_rows = np.stack([src, dst], axis=1)[:, None, :].repeat(2, axis=1).reshape(-1)
    dst_rows = np.stack([dst, src], axis=1)[:, None, :].repeat(2, axis=1).reshape(-1)
    source = np.stack([pi, pj], axis=2).reshape(-1, 2)
    target = np.stack([pj, pi], axis=2).reshape(-1, 2)
    return _Tangencies(src_rows, dst_rows, source, target)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def tangency_residuals(source_views: _Views, target_views: _Views,
                       tangencies: _Tangencies) -> np.ndarray:
    """(M,) signed pixel distance of each target tangent point from the epipolar line of
    its source point; the source side seen by ``source_views``, the target side by
    ``target_views`` (the same cameras, except when differentiating one side)."""
    src, dst = tangencies.src, tangencies.dst
    center = _homogeneous(source_views.centers[src])
    ray = np.einsum("mij,mj->mi", source_views.rays[src], _homogeneous(tangencies.source))
    on_ray = _homogeneous(source_views.centers[src] + ray)
    projection = target_views.projection[dst]
    line = np.cross(np.einsum("mij,mj->mi", projection, center),
                    np.einsum("mij,mj->mi", projection, on_ray))
    return (np.einsum("mi,mi->m", line, _homogeneous(tangencies.target))
            / np.linalg.norm(line[:, :2], axis=1))


def tangency_jacobian(rig: _Rig, raw: np.ndarray, tangencies: _Tangencies,
                      step: float = 1e-6) -> sparse.csr_matrix:
    """(M, 6N) sparse derivative of `tangency_residuals` in the raw parameters (N, 6),
    by central differences. A residual depends on two views only, so each parameter is
    moved in every view at once and the source and target sides are differenced apart:
    12 pairs of evaluations for the whole Jacobian, 12 non-zeros per row."""
    n, m = len(raw), len(tangencies.src)
    base = rig.corrected(raw)
    values, columns = [], []
    for p in range(6):
        delta = np.zeros_like(raw)
        delta[:, p] = step
        plus, minus = rig.corrected(raw + delta), rig.corrected(raw - delta)
        values.append(tangency_residuals(plus, base, tangencies)
                      - tangency_residuals(minus, base, tangencies))
        columns.append(6 * tangencies.src + p)
        values.append(tangency_residuals(base, plus, tangencies)
                      - tangency_residuals(base, minus, tangencies))
        columns.append(6 * tangencies.dst + p)
    rows = np.tile(np.arange(m), len(values))
    return sparse.csr_matrix((np.concatenate(values) / (2 * step),
                              (rows, np.concatenate(columns))), shape=(m, 6 * n))


def calibrate(cameras: Sequence[CameraMatrices], alphas: Sequence[np.ndarray],
              max_steps: int = 30) -> Calibration:
    """Corrections of perspective ``cameras`` (world frame) that make the silhouettes
    ``alphas`` (each (H, W) float in [0, 1], the camera's image size) agree on their
    epipolar tangencies. Views whose silhouette is empty or cut by the border take no
    part (they move only with the gauge). Gauss-Newton with Levenberg-Marquardt damping
    on Huber-weighted residuals plus a small prior toward no correction; the tangent
    points are re-chosen after every step. Raises ValueError when the cameras' optical
    axes are all nearly parallel (`nearest_point_to_axes`).
    """
    hulls = [contour_hull(np.asarray(a, dtype=np.float64)) for a in alphas]
    rig = _Rig.of(cameras)
    n = len(cameras)
    prior = (PRIOR * float(np.mean([abs(c.intrinsics[0, 0]) for c in cameras]))) ** 2
    gauge_free = np.eye(6 * n) - rig.gauge @ rig.gauge.T

    def at(x: np.ndarray) -> _Views:
        return rig.corrected(rig.project(x).reshape(n, 6))

    def residuals(x: np.ndarray, tangencies: _Tangencies) -> np.ndarray:
        views = at(x)
        return tangency_residuals(views, views, tangencies)

    def cost(x: np.ndarray, tangencies: _Tangencies) -> float:
        return _robust_cost(residuals(x, tangencies), HUBER_PX) + 0.5 * prior * float(x @ x)

    flat = np.zeros(6 * n)
    tangencies = select_tangencies(hulls, at(flat))
    rms_before = _rms(residuals(flat, tangencies))
    damping, accepted = 1e-3, 0
    while accepted < max_steps and len(tangencies.src):
        r = residuals(flat, tangencies)
        jac = tangency_jacobian(rig, rig.project(flat).reshape(n, 6), tangencies)
        weights = _huber_weights(r, HUBER_PX)
        normal = (jac.T @ sparse.diags(weights) @ jac).toarray()
        lhs = gauge_free @ normal @ gauge_free + prior * np.eye(6 * n)
        rhs = -(gauge_free @ (jac.T @ (weights * r)) + prior * flat)
        current = cost(flat, tangencies)
        for _attempt in range(8):  # raise the damping until the step lowers the cost
            trial = flat + rig.project(np.linalg.solve(
                lhs + damping * np.diag(np.diagonal(lhs)), rhs))
            trial_cost = cost(trial, tangencies)
            if trial_cost < current:
                break
            damping *= 4.0
        else:
            break
        flat, damping, accepted = trial, max(damping / 3.0, 1e-6), accepted + 1
        tangencies = select_tangencies(hulls, at(flat))
        if current - trial_cost < 1e-6 * current:
            break
    corrections = rig.corrections(rig.project(flat).reshape(n, 6))
    ball = _object_ball(rig, hulls)
    if ball is not None:
        corrections = _keeping_the_object(cameras, corrections, ball)
    return Calibration(corrections, rms_before, _rms(residuals(flat, tangencies)),
                       len(tangencies.src) // 4, sorted({int(i) for i in tangencies.src}),
                       accepted)


def _object_ball(rig: _Rig, hulls: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """`ball_points` (P, 3) standing for the object: centred where the rays through the
    silhouettes' centroids meet (else where the cameras look), as wide as the silhouettes
    seen at that distance; None with fewer than two usable silhouettes."""
    seen = [i for i, h in enumerate(hulls) if h is not None]
    if len(seen) < 2:
        return None
    views = rig.corrected(np.zeros((len(rig.poses), 6)))
    centroids = np.stack([hulls[i].mean(axis=0) for i in seen])
    rays = np.einsum("nij,nj->ni", views.rays[seen], _homogeneous(centroids))
    centre = nearest_point_to_axes(rig.centers[seen], rays)
    if centre is None:
        centre = nearest_point_to_axes(rig.centers, rig.poses[:, 2, :3])
    radii = [np.sqrt(_polygon_area(hulls[i]) / np.pi) * np.linalg.norm(rig.centers[i] - centre)
             / abs(rig.intrinsics[i, 0, 0]) for i in seen]
    return ball_points(centre, float(np.median(radii)))


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


def _keeping_the_object(cameras: Sequence[CameraMatrices], corrections: np.ndarray,
                        points: np.ndarray) -> np.ndarray:
    """``corrections`` (N, 4, 4) changed so that the corrected cameras put the object
    (``points`` (P, 3) standing for it) where the given ``cameras`` do: the raw gauge
    projection removes the similarity in the parameters' own metric, which still lets
    the tangencies' weak directions (per-view turns and rolls) add up to a shift of the
    reconstruction of half a pixel (docs/design.md, "Which frame refined cameras keep")."""
    corrected = [dataclasses.replace(c, world_to_camera=c.world_to_camera @ d)
                 for c, d in zip(cameras, corrections, strict=True)]
    kept = keep_reconstruction(cameras, corrected, points)
    return np.stack([np.linalg.inv(c.world_to_camera) @ k.world_to_camera
                     for c, k in zip(cameras, kept, strict=True)])


def _rms(r: np.ndarray) -> float:
    return float(np.sqrt(np.mean(r ** 2))) if len(r) else 0.0


def _huber_weights(r: np.ndarray, delta: float) -> np.ndarray:
    return np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-12))


def _robust_cost(r: np.ndarray, delta: float) -> float:
    a = np.abs(r)
    return float(np.where(a <= delta, 0.5 * a ** 2, delta * (a - 0.5 * delta)).sum())


@dataclass
class PreCalibration:
    """The tangency solve's outcome for a fit. prep: the views with the training
    cameras corrected (as given when nothing was solved); world: view index -> D (4, 4)
    world matrix, ``world_to_camera' = world_to_camera @ D``, for the corrected views;
    message: what the report says; solved: the views whose tangencies took part, which
    the fit keeps (`backend.fit.camera_refine.CameraRefinement`, ``fixed``)."""

    prep: Prepared
    world: dict[int, np.ndarray]
    message: str
    solved: frozenset[int] = frozenset()


def pre_calibrate(prep: Prepared, options: FitOptions) -> PreCalibration | None:
    """Solve the training cameras from their silhouettes' tangencies before the fit
    (``refine_cameras`` with ``refine_tangents``); None when not asked."""
    if not (options.refine_cameras and options.refine_tangents):
        return None
    cameras = [prep.views[i].camera for i in prep.train_idx]
    if any(c.orthographic for c in cameras):
        return PreCalibration(prep, {}, "cameras not solved from the silhouettes' tangents "
                              "before the fit: orthographic views have no epipoles")
    poses = np.stack([c.world_to_camera for c in cameras])
    if nearest_point_to_axes(camera_centres(poses), poses[:, 2, :3]) is None:
        return PreCalibration(prep, {}, "cameras not solved from the silhouettes' tangents "
                              "before the fit: they all look the same way, so their "
                              "epipolar tangents barely constrain them")
    found = calibrate(cameras, [np.asarray(prep.views[i].image)[..., 3]
                                for i in prep.train_idx])
    if len(found.used) < MIN_REFINED_VIEWS:
        return PreCalibration(prep, {}, "cameras not solved from the silhouettes' tangents "
                              f"before the fit: only {len(found.used)} silhouettes lie whole "
                              "inside their images with another view's centre outside them")
    if (found.rms_before <= AGREEING_RMS_PX
            or found.rms_after * MIN_RMS_DROP > found.rms_before):
        return PreCalibration(prep, {}, "the silhouettes' epipolar tangents agree with the "
                              f"cameras up to noise ({found.rms_before:.2f} px RMS, "
                              f"{found.rms_after:.2f} px after a solve): no correction before "
                              "the fit")
    views = list(prep.views)
    world = dict(zip(prep.train_idx, found.corrections, strict=True))
    for i, correction in world.items():
        camera = views[i].camera
        views[i] = dataclasses.replace(views[i], camera=dataclasses.replace(
            camera, world_to_camera=camera.world_to_camera @ correction))
    solved = frozenset(prep.train_idx[r] for r in found.used)
    left = len(prep.train_idx) - len(solved)
    return PreCalibration(dataclasses.replace(prep, views=views), world, (
        f"cameras solved from the silhouettes' epipolar tangents before the fit "
        f"({found.pairs} view pairs, RMS {found.rms_before:.2f} -> {found.rms_after:.2f} px)"
        + (f"; {left} views they could not use are refined with the mesh" if left else "")),
        solved)
