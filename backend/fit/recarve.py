"""Opening the through-holes the silhouettes show: a mesh re-carved from the visual hull.

Remeshing keeps a mesh's genus, so a fit from a genus-0 start (a cube, a sphere) closes a
torus' hole with a membrane that no silhouette can remove. `carve_into_hull` rebuilds the
mesh as the boundary of (inside the mesh) AND (inside the visual hull): the mesh's
occupancy on the hull's carving grid (`mesh_field`) is intersected with the hull field
and meshed by marching cubes (`backend.fit.visual_hull.visual_hull` with ``within``), so
the membrane is carved away and the shape fitted so far is kept.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

from .visual_hull import HullResult, Silhouettes, visual_hull

# Width (voxels) of the Gaussian that turns the 0/1 occupancy into a smooth field, so
# marching cubes gives a smooth surface instead of voxel steps.
SMOOTHING_VOXELS = 1.0
# The rays run this fraction of the grid's size off its lines (two unrelated numbers), so
# the symmetric meshes of Blender's Add menu, with vertices and edges on the lines, are
# not hit twice on a shared edge.
RAY_OFFSET = (0.7390851e-6, 0.5671433e-6)


def carve_into_hull(silhouettes: Silhouettes, vertices: np.ndarray, faces: np.ndarray,
                    target_faces: int) -> HullResult:
    """The closed mesh bounding (inside the mesh) AND (inside the silhouettes' visual
    hull), with about ``target_faces`` faces.

    vertices: (V, 3) float64 world space; faces: (F, 3) int64, a closed mesh. Raises
    ValueError when the intersection is empty (the mesh is nowhere inside the hull).
    """
    def field(lo: np.ndarray, step: float, shape: tuple[int, int, int]) -> np.ndarray:
        return mesh_field(vertices, faces, lo, step, shape)

    return visual_hull(silhouettes, target_faces=target_faces, within=field)


def mesh_field(vertices: np.ndarray, faces: np.ndarray, lo: np.ndarray, step: float,
               shape: tuple[int, int, int]) -> np.ndarray:
    """A closed mesh's field on a grid (a `visual_hull.GridField`): about the signed
    distance in world units, negative inside, accurate to a voxel near the surface.

    The occupancy (`inside_mesh`) blurred by a Gaussian of SMOOTHING_VOXELS is 0.5 on the
    surface and changes by 1 / (sqrt(2 pi) sigma) per voxel across it; scaled by that
    slope it reads as a distance. vertices (V, 3) float64; faces (F, 3) int64; lo (3,)
    the first grid point; step: the spacing; shape (nx, ny, nz). Returns float64 shape.
    """
    axes = [lo[k] + step * np.arange(shape[k]) for k in range(3)]
    occupancy = inside_mesh(vertices, faces, axes).astype(np.float64)
    blurred = gaussian_filter(occupancy, SMOOTHING_VOXELS, mode="constant")
    return (0.5 - blurred) * math.sqrt(2.0 * math.pi) * SMOOTHING_VOXELS * step


def inside_mesh(vertices: np.ndarray, faces: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """Which points of a grid lie inside a closed mesh: the majority vote of three parity
    tests, with rays along x, y and z (a ray grazing an edge or vertex miscounts in one
    direction only).

    vertices (V, 3) float64; faces (F, 3) int64; axes: the grid's coordinates along x, y,
    z, three increasing 1D arrays (nx,), (ny,), (nz,). Returns (nx, ny, nz) bool.
    """
    votes = sum(_parity_along(vertices[faces], axes, axis).astype(np.int8) for axis in range(3))
    return votes >= 2


def _parity_along(triangles: np.ndarray, axes: list[np.ndarray], axis: int) -> np.ndarray:
    """Odd crossings below each grid point along ``axis``: inside, for a closed mesh.

    triangles: (F, 3, 3) float64 corners. Every grid line along ``axis`` is hit by the
    triangles whose projection (onto the other two axes) contains it; the hits' depths
    are counted into the grid cells they fall in, and a running sum gives the parity.
    """
    a, b = [k for k in range(3) if k != axis]
    xs, ys = (axes[k] + RAY_OFFSET[i] * (axes[k][-1] - axes[k][0]) for i, k in enumerate((a, b)))
    lines, pairs = _lines_under_triangles(triangles[:, :, [a, b]], xs, ys)
    corners = triangles[pairs]  # (P, 3, 3)
    point = np.stack([xs[lines[0]], ys[lines[1]]], axis=1)  # (P, 2)
    weights = _barycentric_2d(corners[:, :, [a, b]], point)
    hit = (weights >= 0).all(axis=1)
    depth = (weights[hit] * corners[hit][:, :, axis]).sum(axis=1)
    below = np.searchsorted(axes[axis], depth)  # the first grid point above each hit
    counts = np.zeros((len(axes[a]), len(axes[b]), len(axes[axis]) + 1), dtype=np.int32)
    np.add.at(counts, (lines[0][hit], lines[1][hit], below), 1)
    inside = np.cumsum(counts, axis=2)[..., :-1] % 2 == 1
    return np.moveaxis(inside, 2, axis)


def _lines_under_triangles(flat: np.ndarray, xs: np.ndarray,
                           ys: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Every (grid line, triangle) pair whose line lies in the triangle's bounding box.

    flat: (F, 3, 2) the triangles projected along the lines; xs (nx,), ys (ny,): the
    lines' coordinates. Returns ((x index (P,), y index (P,)), triangle index (P,)).
    """
    x0 = np.searchsorted(xs, flat[:, :, 0].min(axis=1))
    x1 = np.searchsorted(xs, flat[:, :, 0].max(axis=1), side="right")
    y0 = np.searchsorted(ys, flat[:, :, 1].min(axis=1))
    y1 = np.searchsorted(ys, flat[:, :, 1].max(axis=1), side="right")
    nx, ny = np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)
    count = nx * ny
    pairs = np.repeat(np.arange(len(flat)), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    ny_pairs = np.maximum(ny[pairs], 1)
    return (x0[pairs] + within // ny_pairs, y0[pairs] + within % ny_pairs), pairs


def _barycentric_2d(corners: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Barycentric weights (P, 3) of points (P, 2) in triangles (P, 3, 2); a degenerate
    (zero-area) triangle gets -1 weights (no hit)."""
    (x0, y0), (x1, y1), (x2, y2) = (corners[:, k].T for k in range(3))
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    safe = np.where(det == 0, 1.0, det)
    px, py = point[:, 0] - x2, point[:, 1] - y2
    w0 = ((y1 - y2) * px + (x2 - x1) * py) / safe
    w1 = ((y2 - y0) * px + (x0 - x2) * py) / safe
    weights = np.stack([w0, w1, 1.0 - w0 - w1], axis=1)
    weights[det == 0] = -1.0
    return weights
