"""Initial meshes from silhouettes: the carved visual hull, or a box-fitted icosphere.

The hull is the zero level set of a field on a voxel grid: for every view, the
signed distance (pixels, positive outside) from a point's projection to the
silhouette's outline, converted to world units at the point's depth; the field is
the maximum over views, so it is negative exactly where every silhouette covers
the point. Marching cubes (skimage) turns it into a closed mesh with sub-voxel
accuracy, and the grid resolution is chosen so the mesh lands near a target face
count. Projection uses the renderer's camera model (`backend.render.renderer.project_points`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from skimage.measure import marching_cubes

from ..core.camera import CameraMatrices
from ..render.renderer import Cameras, project_points
from .mesh_ops import face_components, icosphere, repair_mesh

# Point depths below this (world units) count as behind a perspective camera.
_MIN_DEPTH = 1e-6
_CHUNK = 1 << 21  # points x views projected at once

# Another solid's field on the carving grid: (lo (3,) the first grid point, step (grid
# spacing), shape (nx, ny, nz)) -> (nx, ny, nz) float64, world units, negative inside.
GridField = Callable[[np.ndarray, float, tuple[int, int, int]], np.ndarray]


@dataclass
class Silhouettes:
    """Masks and cameras, prepared for carving.

    sdf: per view (H, W) float32 signed distance to the outline in pixels
    (negative inside); cut: per view, True when the silhouette touches the image
    border (points projecting outside that image are then not carved).
    """

    cameras: list[CameraMatrices]
    sdf: list[np.ndarray]
    cut: list[bool]
    names: list[str]

    @staticmethod
    def from_masks(cameras: Sequence[CameraMatrices], masks: Sequence[np.ndarray],
                   names: Sequence[str] | None = None) -> Silhouettes:
        """cameras: one per mask; masks: (H, W) bool (or alpha, thresholded at 0.5)."""
        if len(cameras) != len(masks):
            raise ValueError(f"{len(cameras)} cameras but {len(masks)} masks")
        names = list(names) if names is not None else [f"view {i}" for i in range(len(masks))]
        sdfs, cut = [], []
        for cam, mask, name in zip(cameras, masks, names, strict=True):
            mask = np.asarray(mask)
            mask = mask > 0.5 if mask.dtype != bool else mask
            if mask.shape != (cam.height, cam.width):
                raise ValueError(
                    f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but its camera renders "
                    f"{cam.width}x{cam.height}"
                )
            sdfs.append(silhouette_sdf(mask))
            cut.append(touches_border(mask))
        return Silhouettes(list(cameras), sdfs, cut, names)


def touches_border(mask: np.ndarray) -> bool:
    """Whether a silhouette mask (H, W) bool reaches the image border (is cut by it)."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def silhouette_sdf(mask: np.ndarray) -> np.ndarray:
    """Signed distance (H, W) float32 in pixels from each pixel centre to the mask's
    outline, negative inside; the outline runs half a pixel beyond the mask's centres."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    if mask.all():
        return np.full(mask.shape, -np.inf, dtype=np.float32)
    outside = distance_transform_edt(~mask) - 0.5
    inside = distance_transform_edt(mask) - 0.5
    return np.where(mask, -inside, outside).astype(np.float32)


def hull_field(points: np.ndarray, silhouettes: Silhouettes, per_view: bool = False):
    """The carving field at world points.

    points: (N, 3). Returns (N,) float64, the maximum over views of the signed
    distance (world units, approximately) outside each silhouette: negative inside
    the visual hull. With per_view, returns (N, n_views) instead. Points a view cannot
    judge (outside the image of a view whose silhouette is cut by the border, or
    behind such a camera) get -inf for that view; points no view can judge are +inf
    (outside: nothing saw them).
    """
    n_views = len(silhouettes.sdf)
    cams = Cameras(
        intrinsics=torch.tensor(np.stack([c.intrinsics for c in silhouettes.cameras])),
        world_to_camera=torch.tensor(np.stack([c.world_to_camera
                                               for c in silhouettes.cameras])),
        orthographic=torch.tensor([c.orthographic for c in silhouettes.cameras]),
        width=0, height=0,  # project_points does not use the image size
    )
    chunk = max(4096, _CHUNK // n_views)
    out = np.empty((len(points), n_views))
    for start in range(0, len(points), chunk):
        pts = torch.as_tensor(points[start:start + chunk], dtype=torch.float64)
        uvz = project_points(pts, cams).numpy()  # (n_views, n, 3)
        for k in range(n_views):
            out[start:start + chunk, k] = _view_field(uvz[k], silhouettes.cameras[k],
                                                      silhouettes.sdf[k], silhouettes.cut[k])
    return out if per_view else combine_views(out)


def combine_views(per_view: np.ndarray) -> np.ndarray:
    """(N, n_views) per-view fields -> (N,) hull field; unjudged points count as outside."""
    field = per_view.max(axis=1)
    field[np.isneginf(field)] = np.inf
    return field


def _view_field(uvz: np.ndarray, cam: CameraMatrices, sdf: np.ndarray, cut: bool):
    """One view's column of `hull_field` from the points' projections (n, 3) [u, v, z]."""
    u, v, z = uvz[:, 0], uvz[:, 1], uvz[:, 2]
    H, W = sdf.shape
    if np.isinf(sdf).all():
        return np.full(len(uvz), float(sdf.flat[0]))
    x = np.clip(u - 0.5, 0, W - 1)
    y = np.clip(v - 0.5, 0, H - 1)
    pixels = _bilinear(sdf, x, y)
    # Distance beyond the image's edge, for points that project outside it.
    beyond = np.hypot(np.maximum(0, np.maximum(-u, u - W)), np.maximum(0, np.maximum(-v, v - H)))
    pixels = pixels + beyond
    focal = 0.5 * (cam.intrinsics[0, 0] + cam.intrinsics[1, 1])
    scale = 1.0 / focal if cam.orthographic else np.maximum(z, _MIN_DEPTH) / focal
    world = pixels * scale
    behind = np.zeros_like(z, dtype=bool) if cam.orthographic else z <= _MIN_DEPTH
    if cut:
        world[(beyond > 0) | behind] = -np.inf
    else:
        world[behind] = np.inf
    return world


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    H, W = img.shape
    x0 = np.clip(np.floor(x).astype(np.int64), 0, max(W - 2, 0))
    y0 = np.clip(np.floor(y).astype(np.int64), 0, max(H - 2, 0))
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = x - x0, y - y0
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class HullResult:
    """vertices (V, 3) float64 and faces (F, 3) int64 of the closed hull mesh;
    bbox_min/bbox_max (3,) of the carved region; messages: warnings for the user."""

    vertices: np.ndarray
    faces: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    resolution: int
    messages: list[str] = field(default_factory=list)


def object_bounds(silhouettes: Silhouettes, resolution: int = 40) -> tuple[np.ndarray,
                                                                          np.ndarray, list[str]]:
    """Bounding box (min (3,), max (3,)) of the visual hull, and warnings.

    Carves a coarse cube around the point the silhouettes' centres point at, growing
    it while the hull touches its sides. Raises ValueError when the views cannot
    bound the object or do not agree on it.
    """
    messages = []
    center, radius = _initial_cube(silhouettes)
    # The first cube is generous (see _initial_cube); two doublings cover cameras
    # whose silhouettes' centres miss the object's centre.
    for attempt in range(3):
        lo, hi = center - radius, center + radius
        points, shape = _grid(lo, hi, resolution)
        per_view = hull_field(points, silhouettes, per_view=True)
        inside = combine_views(per_view) < 0
        if not inside.any():
            if attempt == 0:
                _explain_empty(per_view, silhouettes)
            break
        occupied = inside.reshape(shape)
        touches = (occupied[0].any() or occupied[-1].any() or occupied[:, 0].any()
                   or occupied[:, -1].any() or occupied[:, :, 0].any()
                   or occupied[:, :, -1].any())
        idx = np.argwhere(occupied)
        step = (hi - lo) / (np.asarray(shape) - 1)
        box_lo = lo + (idx.min(axis=0) - 1) * step
        box_hi = lo + (idx.max(axis=0) + 1) * step
        if not touches:
            return np.maximum(box_lo, lo), np.minimum(box_hi, hi), messages
        if attempt < 2:
            center = 0.5 * (box_lo + box_hi)
            radius = radius * 2.0
    else:
        messages.append(
            "the silhouettes do not bound the object on every side (is it cut by the image "
            "borders in most views?): the initial mesh was clipped to a box"
        )
        return box_lo, box_hi, messages
    raise ValueError(
        "the silhouettes do not overlap in space: check that the cameras match the images"
    )


def _explain_empty(per_view: np.ndarray, silhouettes: Silhouettes) -> None:
    """Raise a ValueError naming the views whose removal makes the hull non-empty."""
    culprits = []
    n = per_view.shape[1]
    if n > 1:
        for k in range(n):
            others = combine_views(np.delete(per_view, k, axis=1))
            if (others < 0).any():
                culprits.append(silhouettes.names[k])
    if culprits:
        raise ValueError(
            "the silhouettes have no point in common: without "
            + ", ".join(repr(c) for c in culprits)
            + " they would; that camera does not see the object where the others do (check its "
            "position and orientation, and that the image belongs to it)"
        )
    raise ValueError(
        "the silhouettes have no point in common: the cameras do not look at one object "
        "(check the camera matrices and that each image belongs to its camera)"
    )


def _initial_cube(silhouettes: Silhouettes) -> tuple[np.ndarray, float]:
    """Centre (3,) nearest to the rays through the silhouettes' centres, and a half-size."""
    origins, directions, depths_hint = [], [], []
    for cam, sdf in zip(silhouettes.cameras, silhouettes.sdf, strict=True):
        mask = sdf < 0
        if not mask.any() or mask.all():
            continue
        ys, xs = np.nonzero(mask)
        u, v = xs.mean() + 0.5, ys.mean() + 0.5
        extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        c2w = np.linalg.inv(cam.world_to_camera)
        k_inv = np.linalg.inv(cam.intrinsics)
        if cam.orthographic:
            xy = (k_inv @ np.array([u, v, 1.0]))[:2]
            origin = c2w[:3, :3] @ np.array([xy[0], xy[1], 0.0]) + c2w[:3, 3]
            direction = c2w[:3, 2]
            depths_hint.append((extent, cam.intrinsics[0, 0], None))
        else:
            origin = c2w[:3, 3]
            direction = c2w[:3, :3] @ (k_inv @ np.array([u, v, 1.0]))
            depths_hint.append((extent, cam.intrinsics[0, 0], origin))
        origins.append(origin)
        directions.append(direction / np.linalg.norm(direction))
    if len(origins) < 2:
        raise ValueError(
            "an initial mesh from silhouettes needs at least two views with a partial "
            "silhouette; give an initial mesh instead, or more views"
        )
    d = np.asarray(directions)
    o = np.asarray(origins)
    projector = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    a = projector.sum(axis=0)
    b = np.einsum("nij,nj->i", projector, o)
    if np.linalg.cond(a) > 1e6:
        raise ValueError(
            "the views all look along one direction, so the object's depth is unknown: add "
            "views from other directions, or give an initial mesh"
        )
    center = np.linalg.solve(a, b)
    radius = 0.0
    for extent, focal, origin in depths_hint:
        depth = 1.0 if origin is None else np.linalg.norm(center - origin)
        radius = max(radius, 0.75 * extent / focal * depth)
    return center, radius


def _grid(lo: np.ndarray, hi: np.ndarray, resolution: int):
    """Points (N, 3) of a grid over [lo, hi] with `resolution` samples along the
    longest side (equal spacing on all axes), and its shape (nx, ny, nz)."""
    step = float((hi - lo).max()) / (resolution - 1)
    shape = tuple(int(max(2, math.ceil((hi[i] - lo[i]) / step) + 1)) for i in range(3))
    axes = [lo[i] + step * np.arange(shape[i]) for i in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return points, shape


def carve(silhouettes: Silhouettes, bbox_min: np.ndarray, bbox_max: np.ndarray,
          resolution: int, within: GridField | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh of the hull field on a grid over the (padded) box, intersected
    with the solid ``within`` describes when given (see `GridField`).

    Returns vertices (V, 3) float64 and faces (F, 3) int64, outward-facing, closed:
    the grid is framed by a layer counted as outside.
    """
    size = bbox_max - bbox_min
    pad = 0.04 * size.max()
    lo, hi = bbox_min - pad, bbox_max + pad
    points, shape = _grid(lo, hi, resolution)
    step = float((hi - lo).max()) / (resolution - 1)
    values = hull_field(points, silhouettes).reshape(shape)
    if within is not None:
        values = np.maximum(values, within(lo, step, shape))
    # Clamp to a few voxels: marching cubes only interpolates next to the surface.
    values = np.clip(np.nan_to_num(values, posinf=4 * step, neginf=-4 * step), -4 * step, 4 * step)
    values = np.pad(values, 1, constant_values=4 * step)
    if not (values < 0).any():
        raise ValueError("the visual hull is empty at this grid resolution")
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(step, step, step),
                                        gradient_direction="ascent")
    verts = verts + (lo - step)
    return verts.astype(np.float64), faces.astype(np.int64)


def visual_hull(silhouettes: Silhouettes, target_faces: int = 3000,
                max_resolution: int = 160, within: GridField | None = None) -> HullResult:
    """The visual hull as a closed mesh with about `target_faces` faces (at most 1.3x);
    with ``within``, the hull's intersection with that solid (`carve`).

    Raises ValueError (with the reason) when the views do not bound a common region.
    """
    if target_faces < 100:
        raise ValueError(f"target_faces must be at least 100, got {target_faces}")
    bbox_min, bbox_max, messages = object_bounds(silhouettes)
    resolution = 32
    for _ in range(4):
        verts, faces = carve(silhouettes, bbox_min, bbox_max, resolution, within)
        ratio = len(faces) / target_faces
        if 0.75 <= ratio <= 1.3:
            break
        # Marching cubes' face count grows with the square of the resolution.
        new_resolution = int(np.clip(round(resolution / math.sqrt(ratio)), 12, max_resolution))
        if new_resolution == resolution:
            break
        resolution = new_resolution
    verts, faces, dropped = _keep_large_components(verts, faces)
    if dropped:
        messages.append(f"dropped {dropped} small pieces of the visual hull")
    repaired = repair_mesh(verts, faces)
    return HullResult(repaired.vertices, repaired.faces, verts.min(axis=0), verts.max(axis=0),
                      resolution, messages)


def _keep_large_components(verts, faces, fraction: float = 0.05):
    """Drop connected pieces with fewer than `fraction` of the largest one's faces."""
    labels = face_components(faces)
    counts = np.bincount(labels)
    keep_labels = counts >= fraction * counts.max()
    keep = keep_labels[labels]
    dropped = int(np.sum((counts > 0) & ~keep_labels))
    return verts, faces[keep], dropped


def sphere_subdivisions_for(width: int, height: int) -> int:
    """Icosphere level for an image size: more faces for larger images (1280 faces up to
    96 px, 5120 up to 384 px, 20480 beyond)."""
    size = max(width, height)
    if size <= 96:
        return 3
    if size <= 384:
        return 4
    return 5


def bbox_sphere(bbox_min: np.ndarray, bbox_max: np.ndarray,
                subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """An icosphere stretched into the ellipsoid inscribed in the box: vertices (V, 3)
    float64, faces (F, 3) int64."""
    verts, faces = icosphere(subdivisions)
    center = 0.5 * (bbox_min + bbox_max)
    half = 0.5 * (bbox_max - bbox_min)
    return verts * half + center, faces
