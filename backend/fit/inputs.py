"""What a fit starts from: the checked views, the device, the initial mesh and colours.

Everything here is numpy (torch only to project points and to ask for a GPU); bad
input raises `FitError` with a message that says how to fix it, and problems that can
be worked around (skipped views, a repaired mesh) become messages for the result.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.camera import CameraMatrices
from ..core.options import DEVICES, FitError, FitOptions
from ..render.renderer import Cameras, Lighting, RenderSettings, project_points
from .mesh_ops import as_triangles, repair_mesh
from .visual_hull import (
    Silhouettes,
    bbox_sphere,
    object_bounds,
    sphere_subdivisions_for,
    touches_border,
    visual_hull,
)

# A given mesh whose bounding box covers less than this fraction of the visual hull's
# misses most of the silhouettes: it is moved and scaled onto them even without
# align_initial.
AUTO_ALIGN_OVERLAP = 0.5
# Views whose silhouette covers fewer pixels than this count as empty.
MIN_SILHOUETTE_PIXELS = 1


@dataclass
class View:
    """One posed image.

    camera: its `CameraMatrices` (image size included).
    image: (H, W, 4) float32 RGBA in [0, 1], linear; alpha is the silhouette.
    held_out: never fitted, only measured.
    """

    camera: CameraMatrices
    image: np.ndarray
    name: str = ""
    held_out: bool = False


def resolve_device(name: str = "auto") -> str:
    """"cpu" or "cuda" for a requested device ("auto", "cpu", "cuda").

    "auto" picks CUDA when torch sees a GPU and CuPy is installed. Raises FitError for
    "cuda" where either is missing.
    """
    if name not in DEVICES:
        raise FitError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cpu":
        return "cpu"
    have_gpu = torch.cuda.is_available()
    have_cupy = importlib.util.find_spec("cupy") is not None
    if have_gpu and have_cupy:
        return "cuda"
    if name == "auto":
        return "cpu"
    if not have_gpu:
        raise FitError("device 'cuda' was requested but torch sees no CUDA GPU: use 'cpu'")
    raise FitError(
        "device 'cuda' was requested but CuPy is not installed: install cupy-cuda12x "
        "(or cupy-cuda13x) into the backend's environment, or use 'cpu'"
    )


# --------------------------------------------------------------------------- the views


@dataclass
class Prepared:
    """The checked views and which of them play which part (indices in input order)."""

    views: list[View]
    names: list[str]  # unique, one per view
    fit_idx: list[int]  # non-held-out views
    train_idx: list[int]  # the fitting views actually optimised (usable silhouettes)
    heldout_idx: list[int]
    messages: list[str]

    def train_sides(self) -> list[int]:
        """The longer image side (pixels) of every training view."""
        return [max(self.views[i].camera.width, self.views[i].camera.height)
                for i in self.train_idx]


def prepare_views(views: list[View]) -> Prepared:
    """Check every view and sort out the usable ones; raises FitError if none is."""
    if not isinstance(views, list | tuple) or not views:
        raise FitError("no views given: fitting needs at least one camera with its image")
    names, seen = [], set()
    for i, view in enumerate(views):
        if not isinstance(view, View):
            raise FitError(f"view {i} is a {type(view).__name__}, not a backend.fit.fitting.View")
        name = view.name or f"view {i}"
        while name in seen:
            name = f"{name} ({i})"
        seen.add(name)
        names.append(name)
        _check_view(name, view)
    fit_idx = [i for i, v in enumerate(views) if not v.held_out]
    heldout_idx = [i for i, v in enumerate(views) if v.held_out]
    if not fit_idx:
        raise FitError("every view is held out: mark at least one view for fitting")
    train_idx, messages = [], []
    for i in fit_idx:
        usable, message = _silhouette_use(names[i], np.asarray(views[i].image)[..., 3] > 0.5)
        if usable:
            train_idx.append(i)
        if message:
            messages.append(message)
    if not train_idx:
        raise FitError(
            "no view has a usable silhouette (each is empty or fills the whole image): the "
            "images need an alpha channel that covers the object and leaves background around it"
        )
    return Prepared(list(views), names, fit_idx, train_idx, heldout_idx, messages)


def _check_view(name: str, view: View) -> None:
    image = np.asarray(view.image)
    cam = view.camera
    if image.ndim != 3 or image.shape[2] != 4:
        raise FitError(
            f"{name}: image must be (H, W, 4) RGBA with the silhouette in alpha, got shape "
            f"{image.shape}"
        )
    if image.shape[:2] != (cam.height, cam.width):
        raise FitError(
            f"{name}: the image is {image.shape[1]}x{image.shape[0]} pixels but its camera "
            f"renders {cam.width}x{cam.height}: set the render resolution to the image size"
        )
    if not np.all(np.isfinite(image)):
        raise FitError(f"{name}: the image contains NaN or infinite values")
    alpha = image[..., 3]
    if alpha.min() < -1e-3 or alpha.max() > 1.0 + 1e-3:
        raise FitError(
            f"{name}: alpha must lie in [0, 1], got [{alpha.min():.3g}, {alpha.max():.3g}] "
            "(8-bit images must be divided by 255)"
        )
    if not (np.all(np.isfinite(cam.intrinsics)) and np.all(np.isfinite(cam.world_to_camera))):
        raise FitError(f"{name}: the camera matrices contain NaN or infinite values")


def _silhouette_use(name: str, mask: np.ndarray) -> tuple[bool, str]:
    """Whether a fitting view's silhouette mask (H, W) bool can be fitted, and what to say."""
    if mask.sum() < MIN_SILHOUETTE_PIXELS:
        return False, (f"{name}: the silhouette is empty (no alpha above 0.5), so the view was "
                       "not fitted; check that its image has an alpha channel and that the "
                       "camera sees the object")
    if mask.all():
        return False, (f"{name}: the silhouette fills the whole image, so it says nothing about "
                       "the outline and was not fitted; move the camera back or crop less")
    if touches_border(mask):
        return True, (f"{name}: the silhouette is cut by the image border; fitted anyway, "
                      "but the object's hidden part is not constrained by this view")
    return True, ""


def silhouettes(prep: Prepared) -> Silhouettes:
    """The training views' silhouettes, for carving and bounding the object."""
    idx = prep.train_idx
    return Silhouettes.from_masks(
        [prep.views[i].camera for i in idx],
        [np.asarray(prep.views[i].image)[..., 3] for i in idx],
        [prep.names[i] for i in idx],
    )


# --------------------------------------------------------------------------- the initial mesh


@dataclass
class InitialMesh:
    """vertices (V, 3) float64 world space; faces (F, 3) int64; given_faces: the caller's
    faces when the fit keeps them unchanged, else None; messages: what was done;
    aligned: a given mesh was moved onto the silhouettes."""

    vertices: np.ndarray
    faces: np.ndarray
    given_faces: np.ndarray | None
    messages: list[str]
    aligned: bool = False


def initial_mesh(prep: Prepared, vertices, faces, options: FitOptions) -> InitialMesh:
    """The mesh the fit starts from: the given one (checked, repaired and, with
    ``options.align_initial``, moved onto the silhouettes), or one built from the
    silhouettes when ``vertices`` is None."""
    if vertices is None:
        if faces is not None:
            raise FitError("faces were given without vertices: give both, or neither")
        try:
            return _mesh_from_silhouettes(prep, options)
        except ValueError as error:
            hint = ("" if options.refine_cameras else "; if the calibration is only a little "
                    "off, Refine Cameras solves the cameras from the silhouettes first")
            raise FitError(f"cannot build an initial mesh from the silhouettes: {error}"
                           f"{hint}") from None
    if faces is None:
        raise FitError("vertices were given without faces: give both, or neither")
    start = _given_mesh(vertices, faces)
    try:
        lo, hi, warn = object_bounds(silhouettes(prep))
    except ValueError as error:
        if options.align_initial:
            raise FitError(f"cannot align the initial mesh to the silhouettes: {error}") from None
        return start
    vlo, vhi = start.vertices.min(axis=0), start.vertices.max(axis=0)
    overlap = box_coverage(vlo, vhi, lo, hi)
    if not options.align_initial and overlap >= AUTO_ALIGN_OVERLAP:
        return start
    scale = np.linalg.norm(hi - lo) / max(np.linalg.norm(vhi - vlo), 1e-12)
    start.vertices = (start.vertices - 0.5 * (vlo + vhi)) * scale + 0.5 * (lo + hi)
    start.aligned = True
    start.messages += warn
    why = ("" if options.align_initial else
           f" automatically (Align First), as its bounding box covered only {overlap:.0%} of "
           "the silhouettes' visual hull's")
    start.messages.append(f"initial mesh: moved and scaled by {scale:.3g} onto the "
                          f"silhouettes{why}")
    return start


def box_coverage(lo_a: np.ndarray, hi_a: np.ndarray, lo_b: np.ndarray, hi_b: np.ndarray) -> float:
    """The fraction of box b's volume inside box a; boxes given by (3,) min and max
    corners (a flat extent counts as 1e-9 so the ratio stays defined)."""
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 1e-9, None).prod()
    return float(inter / np.maximum(hi_b - lo_b, 1e-9).prod())


def _mesh_from_silhouettes(prep: Prepared, options: FitOptions) -> InitialMesh:
    """The visual hull, or an icosphere over the silhouettes' bounding box (``options.init``).
    Raises ValueError where the silhouettes do not bound the object."""
    sil = silhouettes(prep)
    size = max(prep.train_sides())
    if options.init == "hull":
        hull = visual_hull(sil, target_faces=options.init_faces or auto_init_faces(size))
        return InitialMesh(hull.vertices, hull.faces, None, hull.messages + [
            f"initial mesh: the visual hull of {len(prep.train_idx)} silhouettes, "
            f"{len(hull.faces)} faces"])
    lo, hi, warn = object_bounds(sil)
    level = (sphere_subdivisions_for(size, size) if not options.init_faces
             else max(0, round(math.log(options.init_faces / 20, 4))))
    verts, tris = bbox_sphere(lo, hi, level)
    return InitialMesh(verts, tris, None, warn + [
        f"initial mesh: an icosphere of {len(tris)} faces over the silhouettes' bounding box"])


def _given_mesh(vertices, faces) -> InitialMesh:
    """The caller's mesh checked, triangulated and repaired."""
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise FitError(f"vertices must have shape (V, 3) with V > 0, got {vertices.shape}")
    if not np.all(np.isfinite(vertices)):
        raise FitError("the initial vertices contain NaN or infinite values")
    try:
        tris, n_split = as_triangles(faces)
    except ValueError as error:
        raise FitError(f"initial mesh: {error}") from None
    if len(tris) == 0:
        raise FitError("the initial mesh has no faces")
    if tris.min() < 0 or tris.max() >= len(vertices):
        raise FitError(
            f"initial mesh: face indices must lie in [0, {len(vertices) - 1}], got "
            f"[{tris.min()}, {tris.max()}]"
        )
    messages = [f"initial mesh: split {n_split} polygons into triangles"] if n_split else []
    repaired = repair_mesh(vertices, tris)
    if len(repaired.faces) == 0:
        raise FitError("the initial mesh has only degenerate faces (repeated corners)")
    messages += [f"initial mesh: {m}" for m in repaired.messages]
    unchanged = n_split == 0 and np.array_equal(repaired.faces, tris)
    return InitialMesh(repaired.vertices, repaired.faces, tris if unchanged else None, messages)


def auto_init_faces(size: int) -> int:
    """Visual-hull face count for the largest image side (pixels)."""
    if size <= 96:
        return 1500
    if size <= 384:
        return 2500
    return 6000


def initial_colors(prep: Prepared, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex RGB (V, 3) float64: the average of the target colours each vertex projects
    onto, over the views it faces (a cheap visibility test), inside the silhouettes; grey
    where no view sees it. vertices (V, 3) float64 world space, faces (F, 3) int64."""
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    np.add.at(normals, faces.reshape(-1), np.repeat(face_n, 3, axis=0))
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    total = np.zeros_like(vertices)
    weight = np.zeros(len(vertices))
    pts = torch.as_tensor(vertices, dtype=torch.float64)
    for i in prep.train_idx:
        cam, image = prep.views[i].camera, np.asarray(prep.views[i].image)
        uvz = project_points(pts, Cameras.from_matrices([cam], dtype=torch.float64))[0].numpy()
        x = np.clip(np.floor(uvz[:, 0]).astype(np.int64), 0, cam.width - 1)
        y = np.clip(np.floor(uvz[:, 1]).astype(np.int64), 0, cam.height - 1)
        c2w = np.linalg.inv(cam.world_to_camera)
        if cam.orthographic:
            to_camera = np.broadcast_to(-c2w[:3, 2], vertices.shape)
        else:
            to_camera = c2w[:3, 3] - vertices
            to_camera = to_camera / np.maximum(np.linalg.norm(to_camera, axis=1,
                                                              keepdims=True), 1e-12)
        facing = np.maximum((normals * to_camera).sum(axis=1), 0.0)
        w = facing * (image[y, x, 3] > 0.5) * (uvz[:, 2] > 0)
        total += w[:, None] * image[y, x, :3]
        weight += w
    colors = np.full_like(vertices, 0.5)
    seen = weight > 1e-6
    colors[seen] = total[seen] / weight[seen, None]
    return np.clip(colors, 0.0, 1.0)


def render_settings(prep: Prepared, vertices: np.ndarray, options: FitOptions) -> RenderSettings:
    """Near/far around the initial mesh's depths in every view, generous enough for the fit.
    vertices: (V, 3) float64, the initial mesh in world space."""
    cams = [prep.views[i].camera for i in prep.fit_idx + prep.heldout_idx]
    pts = torch.as_tensor(vertices, dtype=torch.float64)
    depths = []
    for cam in cams:
        z = project_points(pts, Cameras.from_matrices([cam], dtype=torch.float64))[0, :, 2]
        depths.append(z.numpy())
    z = np.concatenate(depths)
    extent = float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))
    far = max(float(z.max()), 0.0) + 2.0 * extent
    front = z[z > 0]
    near = max(float(front.min()) * 0.1 if len(front) else far * 1e-4, far * 1e-5)
    return RenderSettings(near=near, far=far,
                          lighting=Lighting() if options.lighting else None)
