"""Triangle quality of a mesh: per-triangle minimum angles and their summary statistics.

    angles = min_angles(vertices, faces)     # (F,) degrees, 0 for a degenerate triangle
    stats = quality_stats(vertices, faces)   # dict of plain floats, for reports and benchmarks
    pairs = crossing_pairs(vertices, faces)  # (P, 2) faces that cross, sharing no edge

A well-shaped surface mesh has every triangle's smallest angle far from zero
(60 degrees for an equilateral triangle); slivers (a small minimum angle) make
the shading noisy and the fit's gradients badly conditioned. A surface that passes
through itself (crossing triangles) shades as a dark pit or fold. numpy only.
"""

from __future__ import annotations

import numpy as np

from ..core.mesh_arrays import triangle_arrays

# The thresholds `quality_stats` counts triangles under, in degrees.
SLIVER_THRESHOLDS = (10.0, 20.0)


def corner_angles(vertices, faces) -> np.ndarray:
    """The three interior angles of every triangle, in degrees.

    vertices: (V, 3) float; faces: (F, 3) integer. Returns (F, 3) float64, column k
    the angle at corner ``faces[:, k]``; a corner with a zero-length side gets 0.
    """
    vertices, faces = triangle_arrays(vertices, faces)
    corners = vertices[faces]  # (F, 3, 3): triangle, corner, xyz
    to_next = np.roll(corners, -1, axis=1) - corners
    to_prev = np.roll(corners, 1, axis=1) - corners
    # atan2(|a x b|, a . b) stays accurate near 0 and 180 degrees, unlike acos.
    sine = np.linalg.norm(np.cross(to_next, to_prev), axis=2)
    cosine = np.einsum("fkc,fkc->fk", to_next, to_prev)
    angles = np.degrees(np.arctan2(sine, cosine))
    zero_side = (np.linalg.norm(to_next, axis=2) == 0) | (np.linalg.norm(to_prev, axis=2) == 0)
    return np.where(zero_side, 0.0, angles)


def min_angles(vertices, faces) -> np.ndarray:
    """Each triangle's smallest interior angle in degrees: (F,) float64 in [0, 60].

    0 for a degenerate triangle (collinear or coincident corners).
    """
    return corner_angles(vertices, faces).min(axis=1)


def quality_stats(vertices, faces) -> dict[str, float]:
    """Summary of the per-triangle minimum angles (degrees) of a triangle mesh.

    vertices: (V, 3) float; faces: (F, 3) integer, at least one face. Returns plain
    floats: ``faces`` (count), ``min_angle_min``, ``min_angle_p5`` (5th percentile),
    ``min_angle_mean``, and ``pct_under_10`` / ``pct_under_20`` (percent of triangles
    whose minimum angle is under 10 / 20 degrees).
    """
    angles = min_angles(vertices, faces)
    if angles.size == 0:
        raise ValueError("the mesh has no faces: quality statistics need at least one triangle")
    stats = {
        "faces": float(angles.size),
        "min_angle_min": float(angles.min()),
        "min_angle_p5": float(np.percentile(angles, 5)),
        "min_angle_mean": float(angles.mean()),
    }
    for threshold in SLIVER_THRESHOLDS:
        stats[f"pct_under_{threshold:g}"] = float(100.0 * np.mean(angles < threshold))
    return stats


GRID_CELLS_PER_TRIANGLE = 1.0  # grid cell side in typical (median) triangle box sizes


def crossing_pairs(vertices, faces) -> np.ndarray:
    """Pairs of triangles that intersect and share no edge: (P, 2) int64, i < j per row.

    vertices: (V, 3) float; faces: (F, 3) integer. A clean closed surface has none; each
    pair is one place where the surface passes through itself (two triangles sharing a
    vertex count if they cross beyond it: a fold, as Blender's BVH overlap test counts
    them). Triangles touching only
    in a plane (coplanar overlaps) are not counted. Candidates come from a uniform grid of
    the triangles' bounding boxes, then an exact edge-through-triangle test in float64.
    """
    vertices, faces = triangle_arrays(vertices, faces)
    candidates = _box_overlaps(vertices[faces])
    if len(candidates) == 0:
        return candidates
    a, b = faces[candidates[:, 0]], faces[candidates[:, 1]]
    # Neighbours across an edge touch along it; those sharing one vertex can still fold
    # over each other (the test ignores edges from the shared vertex: it lies in the plane).
    candidates = candidates[(a[:, :, None] == b[:, None, :]).sum(axis=(1, 2)) <= 1]
    p, q = vertices[faces[candidates[:, 0]]], vertices[faces[candidates[:, 1]]]
    return candidates[_triangles_cross(p, q) | _triangles_cross(q, p)]


def _box_overlaps(corners: np.ndarray) -> np.ndarray:
    """Pairs (P, 2) int64, i < j, of triangles (F, 3 corners, 3) whose bounding boxes overlap."""
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    if len(corners) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    cell = max(float(np.median((hi - lo).max(axis=1))) * GRID_CELLS_PER_TRIANGLE, 1e-12)
    first = np.floor((lo - lo.min(axis=0)) / cell).astype(np.int64)
    last = np.floor((hi - lo.min(axis=0)) / cell).astype(np.int64)
    span = last - first + 1  # cells per axis each box covers
    count = span.prod(axis=1)
    tri = np.repeat(np.arange(len(corners)), count)
    rank = np.arange(len(tri)) - np.repeat(np.cumsum(count) - count, count)
    sy, sz = span[tri, 1], span[tri, 2]
    offset = np.stack([rank // (sy * sz), (rank // sz) % sy, rank % sz], axis=1)
    ijk = first[tri] + offset
    size = last.max(axis=0) + 1
    key = (ijk[:, 0] * size[1] + ijk[:, 1]) * size[2] + ijk[:, 2]
    order = np.argsort(key, kind="stable")
    key, tri = key[order], tri[order]
    # Each entry pairs with the later entries of its cell (its run of equal keys).
    run_end = np.searchsorted(key, key, side="right")
    later = run_end - np.arange(len(key)) - 1
    first_of = np.repeat(np.arange(len(key)), later)
    step = np.arange(len(first_of)) - np.repeat(np.cumsum(later) - later, later) + 1
    pairs = np.sort(np.stack([tri[first_of], tri[first_of + step]], axis=1), axis=1)
    i, j = pairs[:, 0], pairs[:, 1]
    pairs = pairs[(i != j) & ((lo[i] <= hi[j]) & (lo[j] <= hi[i])).all(axis=1)]
    n = len(corners)
    pairs = np.unique(pairs[:, 0] * n + pairs[:, 1])  # a pair sharing several cells once
    return np.stack([pairs // n, pairs % n], axis=1)


def _triangles_cross(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(P,) bool: some edge of triangle p (P, 3, 3) passes through the inside of triangle q."""
    out = np.zeros(len(p), dtype=bool)
    a, b, c = q[:, 0], q[:, 1], q[:, 2]
    for k in range(3):
        s, t = p[:, k], p[:, (k + 1) % 3]
        # The ends on opposite sides of q's plane, and the segment inside q's three edges.
        side_s, side_t = _volume(a, b, c, s), _volume(a, b, c, t)
        straddles = side_s * side_t < 0
        e1, e2, e3 = _volume(s, t, a, b), _volume(s, t, b, c), _volume(s, t, c, a)
        inside = ((e1 > 0) & (e2 > 0) & (e3 > 0)) | ((e1 < 0) & (e2 < 0) & (e3 < 0))
        out |= straddles & inside
    return out


def _volume(a, b, c, d) -> np.ndarray:
    """Six times the signed volume of tetrahedra (a, b, c, d), each (P, 3): (P,)."""
    return np.einsum("ij,ij->i", np.cross(b - a, c - a), d - a)
