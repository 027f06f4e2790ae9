"""Fit a triangle mesh to posed RGBA images (alpha = silhouette) with the soft rasterizer.

    result = fit([View(camera, image), ...], vertices, faces, FitOptions(iterations=300))

numpy in, numpy out; no bpy. The optimiser moves every vertex (offsets from the
initial mesh) plus a global translation and scale with Adam, minimising
``1 - soft IoU`` of the silhouettes (and an L1 colour term when fitting colours)
plus geometric regularisers (`backend.fit.losses`). It runs coarse to fine: the first
iterations render downsampled images (intrinsics scaled, targets area-averaged)
with soft edges, later ones full-resolution images with sharp edges, and the mesh
can be subdivided partway so detail can appear.

All geometry is optimised in a normalised frame (the initial mesh centred, about two
units across), so learning rate and loss weights do not depend on the scene's scale.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.camera import CameraMatrices
from ..core.options import DEVICES, FitError, FitOptions  # noqa: F401 (part of this API)
from ..render.renderer import (
    Cameras,
    Lighting,
    RenderSettings,
    project_points,
    render,
    render_silhouette,
)
from . import losses
from .mesh_ops import (
    EdgeAdjacency,
    as_triangles,
    edge_adjacency,
    edges,
    laplacian,
    repair_mesh,
    subdivide,
)
from .visual_hull import (
    Silhouettes,
    bbox_sphere,
    object_bounds,
    sphere_subdivisions_for,
    visual_hull,
)

# Edge softness (px^2) of the renders that measure hard IoU: alpha > 0.5 is then
# point-sampled coverage of the pixel centre.
EVAL_SIGMA = 1e-3
EVAL_BATCH = 8
# The coarsest level's longer image side, in pixels: smaller images show too little.
MIN_LEVEL_SIDE = 32
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


@dataclass
class Progress:
    """Sent to ``on_progress`` after every iteration.

    losses: each weighted-before term's value and "total". view_iou: the latest hard
    IoU of each non-held-out view in input order (measured at the resolution the view
    was last rendered at). vertices: (V, 3) float32 world-space every
    ``stream_every`` iterations (and the first and last), else None. faces: (F, 3)
    int32 with the first vertices and whenever the topology changed since the last
    vertices sent, else None.
    """

    iteration: int
    iterations: int
    losses: dict[str, float]
    mean_iou: float
    view_iou: list[float]
    elapsed: float
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None


@dataclass
class FitResult:
    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    colors: np.ndarray | None  # (V, 3) float32 when colours were fitted
    topology_changed: bool  # faces differ from the ones given (None given counts as changed)
    fit_iou: dict[str, float]  # hard IoU at full resolution, per non-held-out view
    heldout_iou: dict[str, float]
    mean_fit_iou: float
    loss_history: list[dict[str, float]]
    timing: dict[str, float]  # seconds: init, optimise, evaluate, total, per_iteration
    iterations: int  # iterations completed
    device: str
    status: str  # "done" | "cancelled" | "diverged"
    message: str


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


# --------------------------------------------------------------------------- input checks


@dataclass
class _Prepared:
    views: list[View]
    names: list[str]
    fit_idx: list[int]  # non-held-out views, input order
    train_idx: list[int]  # the fitting views actually optimised (usable silhouettes)
    heldout_idx: list[int]
    messages: list[str]


def _prepare_views(views: list[View]) -> _Prepared:
    if not isinstance(views, list | tuple) or not views:
        raise FitError("no views given: fitting needs at least one camera with its image")
    names, seen, messages = [], set(), []
    for i, view in enumerate(views):
        if not isinstance(view, View):
            raise FitError(f"view {i} is a {type(view).__name__}, not a backend.fit.fitting.View")
        name = view.name or f"view {i}"
        while name in seen:
            name = f"{name} ({i})"
        seen.add(name)
        names.append(name)
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
    fit_idx = [i for i, v in enumerate(views) if not v.held_out]
    heldout_idx = [i for i, v in enumerate(views) if v.held_out]
    if not fit_idx:
        raise FitError("every view is held out: mark at least one view for fitting")
    train_idx = []
    for i in fit_idx:
        mask = np.asarray(views[i].image)[..., 3] > 0.5
        if mask.sum() < MIN_SILHOUETTE_PIXELS:
            messages.append(
                f"{names[i]}: the silhouette is empty (no alpha above 0.5), so the view was "
                "not fitted; check that its image has an alpha channel and that the camera "
                "sees the object"
            )
        elif mask.all():
            messages.append(
                f"{names[i]}: the silhouette fills the whole image, so it says nothing about "
                "the outline and was not fitted; move the camera back or crop less"
            )
        else:
            train_idx.append(i)
            if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
                messages.append(
                    f"{names[i]}: the silhouette is cut by the image border; fitted anyway, "
                    "but the object's hidden part is not constrained by this view"
                )
    if not train_idx:
        raise FitError(
            "no view has a usable silhouette (each is empty or fills the whole image): the "
            "images need an alpha channel that covers the object and leaves background around it"
        )
    return _Prepared(list(views), names, fit_idx, train_idx, heldout_idx, messages)


def _silhouettes(prep: _Prepared) -> Silhouettes:
    idx = prep.train_idx
    return Silhouettes.from_masks(
        [prep.views[i].camera for i in idx],
        [np.asarray(prep.views[i].image)[..., 3] for i in idx],
        [prep.names[i] for i in idx],
    )


def _initial_mesh(prep: _Prepared, vertices, faces, options: FitOptions):
    """(vertices (V, 3) float64, faces (F, 3) int64, given_faces or None, messages)."""
    messages = []
    if vertices is None:
        if faces is not None:
            raise FitError("faces were given without vertices: give both, or neither")
        try:
            sil = _silhouettes(prep)
            size = max(max(prep.views[i].camera.width, prep.views[i].camera.height)
                       for i in prep.train_idx)
            if options.init == "hull":
                target = options.init_faces or auto_init_faces(size)
                hull = visual_hull(sil, target_faces=target)
                messages += hull.messages
                messages.append(
                    f"initial mesh: the visual hull of {len(prep.train_idx)} silhouettes, "
                    f"{len(hull.faces)} faces"
                )
                return hull.vertices, hull.faces, None, messages
            lo, hi, warn = object_bounds(sil)
            messages += warn
            level = (sphere_subdivisions_for(size, size) if not options.init_faces
                     else max(0, round(math.log(options.init_faces / 20, 4))))
            verts, tris = bbox_sphere(lo, hi, level)
            messages.append(f"initial mesh: an icosphere of {len(tris)} faces over the "
                            "silhouettes' bounding box")
            return verts, tris, None, messages
        except ValueError as error:
            raise FitError(f"cannot build an initial mesh from the silhouettes: {error}") from None
    if faces is None:
        raise FitError("vertices were given without faces: give both, or neither")
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
    if n_split:
        messages.append(f"initial mesh: split {n_split} polygons into triangles")
    repaired = repair_mesh(vertices, tris)
    if len(repaired.faces) == 0:
        raise FitError("the initial mesh has only degenerate faces (repeated corners)")
    messages += [f"initial mesh: {m}" for m in repaired.messages]
    changed = n_split > 0 or len(repaired.faces) != len(tris) or not np.array_equal(
        repaired.faces, tris)
    given = None if changed else tris
    verts = repaired.vertices
    if options.align_initial:
        try:
            lo, hi, warn = object_bounds(_silhouettes(prep))
        except ValueError as error:
            raise FitError(f"cannot align the initial mesh to the silhouettes: {error}") from None
        messages += warn
        vlo, vhi = verts.min(axis=0), verts.max(axis=0)
        scale = np.linalg.norm(hi - lo) / max(np.linalg.norm(vhi - vlo), 1e-12)
        verts = (verts - 0.5 * (vlo + vhi)) * scale + 0.5 * (lo + hi)
        messages.append(f"initial mesh: moved and scaled by {scale:.3g} onto the silhouettes")
    return verts, repaired.faces, given, messages


def auto_init_faces(size: int) -> int:
    """Visual-hull face count for the largest image side (pixels)."""
    if size <= 96:
        return 1500
    if size <= 384:
        return 2500
    return 6000


# --------------------------------------------------------------------------- targets


@dataclass
class _Group:
    """Views of one image size at one resolution level, as tensors on the device."""

    indices: list[int]  # view indices (input order)
    cameras: Cameras  # normalised-frame cameras at this level
    alpha: torch.Tensor  # (B, h, w)
    rgb: torch.Tensor | None  # (B, h, w, 3)


def _normalising_transform(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    center = 0.5 * (lo + hi)
    scale = 0.5 * float((hi - lo).max())
    return center, scale if scale > 0 else 1.0


def _level_groups(prep: _Prepared, indices: list[int], scale: float, center: np.ndarray,
                  norm_scale: float, with_rgb: bool, device, dtype) -> dict[int, _Group]:
    """Views grouped by size, images area-downsampled by `scale`. Maps view index -> group."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        cam = prep.views[i].camera
        by_size.setdefault((cam.width, cam.height), []).append(i)
    to_world = np.eye(4)
    to_world[:3, :3] *= norm_scale
    to_world[:3, 3] = center
    out = {}
    for (width, height), idx in by_size.items():
        w = max(1, round(width * scale))
        h = max(1, round(height * scale))
        mats = []
        for i in idx:
            cam = prep.views[i].camera.resized(w, h)
            mats.append(dataclasses.replace(cam, world_to_camera=cam.world_to_camera @ to_world))
        cams = Cameras.from_matrices(mats, dtype=dtype, device=device)
        images = torch.tensor(np.stack([np.asarray(prep.views[i].image, dtype=np.float32)
                                        for i in idx]), dtype=dtype, device=device)
        if (w, h) != (width, height):
            images = torch.nn.functional.interpolate(
                images.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)
        group = _Group(idx, cams, images[..., 3].contiguous(),
                       images[..., :3].contiguous() if with_rgb else None)
        for i in idx:
            out[i] = group
    return out


def _levels(options: FitOptions, smallest_side: int) -> list[float]:
    """Resolution scales from coarse to full (1.0), halving; none below MIN_LEVEL_SIDE px."""
    start = max(options.resolution_start, min(1.0, MIN_LEVEL_SIDE / smallest_side))
    levels = [1.0]
    if options.coarse_fraction > 0:
        while levels[0] / 2 >= start * 0.999:
            levels.insert(0, levels[0] / 2)
        if levels[0] > start * 1.001:
            levels.insert(0, start)
    return levels


def _level_at(iteration: int, options: FitOptions, n_levels: int) -> int:
    """Index of the resolution level for a 0-based iteration."""
    if n_levels == 1:
        return 0
    coarse_iters = options.coarse_fraction * options.iterations
    if iteration >= coarse_iters:
        return n_levels - 1
    return min(int(iteration / coarse_iters * (n_levels - 1)), n_levels - 2)


def _sigma_at(iteration: int, options: FitOptions) -> float:
    span = options.sharpen_fraction * options.iterations
    t = 1.0 if span <= 0 else min(iteration / span, 1.0)
    return options.sigma_start * (options.sigma_end / options.sigma_start) ** t


# --------------------------------------------------------------------------- the fit


class _Mesh:
    """The optimised state: base shape + offsets, global transform, colours."""

    def __init__(self, base: torch.Tensor, faces: np.ndarray, options: FitOptions,
                 colors: torch.Tensor | None):
        self.options = options
        device, dtype = base.device, base.dtype
        self.translation = torch.zeros(3, dtype=dtype, device=device, requires_grad=True)
        self.log_scale = torch.zeros(1, dtype=dtype, device=device, requires_grad=True)
        self.color_logits = None
        if colors is not None:
            self.color_logits = torch.logit(colors.clamp(0.02, 0.98)).requires_grad_(True)
        self.set_topology(base, faces)

    def set_topology(self, base: torch.Tensor, faces: np.ndarray) -> None:
        device, dtype = base.device, base.dtype
        self.base = base.detach()
        self.faces_np = faces
        self.faces = torch.as_tensor(faces, dtype=torch.long, device=device)
        self.offsets = torch.zeros_like(self.base, requires_grad=True)
        self.laplacian = laplacian(faces, len(base), dtype=dtype, device=device)
        adjacency = edge_adjacency(faces)
        self.adjacency = EdgeAdjacency(*(torch.as_tensor(x, device=device) for x in (
            adjacency.edge, adjacency.opposite, adjacency.face_pair)))
        self.edges = torch.as_tensor(edges(faces), device=device)
        lengths = (self.base[self.edges[:, 0]] - self.base[self.edges[:, 1]]).norm(dim=1)
        self.edge_target = float(lengths.mean()) if len(lengths) else 1.0
        groups = [{"params": [self.offsets], "lr": self.options.learning_rate}]
        if self.options.fit_transform:
            groups.append({"params": [self.translation, self.log_scale],
                           "lr": self.options.learning_rate})
        if self.color_logits is not None:
            groups.append({"params": [self.color_logits],
                           "lr": self.options.color_learning_rate})
        self.optimizer = torch.optim.Adam(groups, betas=(0.5, 0.99))
        self.base_lrs = [g["lr"] for g in groups]

    def shape(self) -> torch.Tensor:
        """Normalised-frame vertices before the global transform."""
        return self.base + self.offsets

    def vertices(self) -> torch.Tensor:
        return self.shape() * torch.exp(self.log_scale) + self.translation

    def colors(self) -> torch.Tensor | None:
        return None if self.color_logits is None else torch.sigmoid(self.color_logits)

    def snapshot(self) -> dict:
        with torch.no_grad():
            return {
                "vertices": self.vertices().detach().clone(),
                "faces": self.faces_np,
                "colors": None if self.color_logits is None else self.colors().detach().clone(),
            }

    def subdivide(self) -> None:
        with torch.no_grad():
            shape = self.shape()
            if self.color_logits is not None:
                shape, faces, (logits,) = subdivide(shape, self.faces_np, [self.color_logits])
                self.color_logits = logits.detach().clone().requires_grad_(True)
            else:
                shape, faces = subdivide(shape, self.faces_np)
        self.set_topology(shape, faces)

    def params(self) -> list[torch.Tensor]:
        out = [self.offsets, self.translation, self.log_scale]
        return out + ([self.color_logits] if self.color_logits is not None else [])


def fit(
    views: list[View],
    vertices: np.ndarray | None = None,
    faces=None,
    options: FitOptions | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Fit a mesh to the views' silhouettes (and colours, if asked).

    vertices: (V, 3) initial mesh, or None to start from the silhouettes' visual hull
    (or an icosphere, ``options.init``). faces: (F, 3) integer triangles, or a list of
    polygons (fan-triangulated). Raises FitError for input it cannot use; problems it
    can work around (skipped views, repaired mesh) are listed in the result's message.
    """
    t_start = time.perf_counter()
    options = options or FitOptions()
    if not isinstance(options, FitOptions):
        raise FitError("options must be a FitOptions (FitOptions.from_dict for plain data)")
    device = resolve_device(options.device)
    dtype = torch.float32
    torch.manual_seed(options.seed)
    prep = _prepare_views(views)
    messages = list(prep.messages)
    verts0, faces0, given_faces, init_messages = _initial_mesh(prep, vertices, faces, options)
    messages += init_messages
    center, norm_scale = _normalising_transform(verts0)
    t_init = time.perf_counter()

    base = torch.tensor((verts0 - center) / norm_scale, dtype=dtype, device=device)
    with_rgb = options.fit_colors
    init_colors = None
    if with_rgb:
        init_colors = torch.tensor(_initial_colors(prep, verts0, faces0), dtype=dtype,
                                   device=device)
    mesh = _Mesh(base, faces0, options, init_colors)
    settings = _render_settings(prep, verts0, options)

    levels = _levels(options, min(max(prep.views[i].camera.width, prep.views[i].camera.height)
                                  for i in prep.train_idx))
    level_groups = [None] * len(levels)

    def groups_at(level: int) -> dict[int, _Group]:
        if level_groups[level] is None:
            level_groups[level] = _level_groups(prep, prep.train_idx, levels[level], center,
                                                norm_scale, with_rgb, device, dtype)
        return level_groups[level]

    # Hard IoU of every non-held-out view, refreshed whenever a view is rendered.
    full_fit = _level_groups(prep, prep.fit_idx, 1.0, center, norm_scale, False, device, dtype)
    latest_iou = _evaluate(mesh.vertices().detach(), mesh.faces, full_fit, prep.fit_idx, settings)
    messages += _coverage_warnings(prep, latest_iou, vertices is not None,
                                   options.align_initial)

    rng = np.random.default_rng(options.seed)
    order: list[int] = []
    per_step = min(options.views_per_step, len(prep.train_idx))
    subdivide_iters = sorted({int(round(f * options.iterations)) for f in options.subdivide_at})
    history: list[dict[str, float]] = []
    last_good = mesh.snapshot()
    status, stop_reason = "done", ""
    topology_changed = given_faces is None
    faces_pending = True  # the first streamed vertices carry the faces
    completed = 0
    t_loop = time.perf_counter()

    for it in range(options.iterations):
        if should_stop is not None and should_stop():
            status, stop_reason = "cancelled", f"cancelled after {it} iterations"
            break
        if it in subdivide_iters:
            if 4 * len(mesh.faces_np) <= options.max_faces:
                mesh.subdivide()
                topology_changed = faces_pending = True
                last_good = mesh.snapshot()
            else:
                messages.append(
                    f"skipped the subdivision at iteration {it}: {4 * len(mesh.faces_np)} "
                    f"faces would exceed max_faces={options.max_faces}"
                )
        decay = options.lr_final ** (it / max(options.iterations - 1, 1))
        for group, base_lr in zip(mesh.optimizer.param_groups, mesh.base_lrs, strict=True):
            group["lr"] = base_lr * decay
        level = _level_at(it, options, len(levels))
        groups = groups_at(level)
        sigma = _sigma_at(it, options)
        step_settings = dataclasses.replace(settings, sigma=sigma)
        if len(order) < per_step:
            order += [prep.train_idx[k] for k in rng.permutation(len(prep.train_idx))]
        chosen, order = order[:per_step], order[per_step:]

        mesh.optimizer.zero_grad(set_to_none=True)
        verts = mesh.vertices()
        colors = mesh.colors()
        terms = _image_losses(verts, mesh.faces, colors, chosen, groups, step_settings,
                              latest_iou)
        shape = mesh.shape()
        terms["laplacian"] = losses.laplacian_loss(mesh.offsets, mesh.laplacian)
        terms["flatten"] = losses.flatten_loss(shape, mesh.adjacency)
        terms["edge"] = losses.edge_length_loss(shape, mesh.edges, mesh.edge_target)
        terms["normal"] = losses.normal_consistency_loss(shape, mesh.faces, mesh.adjacency)
        weights = {"silhouette": options.silhouette_weight, "color": options.color_weight,
                   "laplacian": options.laplacian_weight, "flatten": options.flatten_weight,
                   "edge": options.edge_weight, "normal": options.normal_weight}
        total = sum(weights[k] * v for k, v in terms.items())
        bad = [k for k, v in terms.items() if not torch.isfinite(v)]
        if bad:
            status = "diverged"
            stop_reason = (f"stopped at iteration {it}: the loss term(s) {', '.join(bad)} became "
                           "NaN or infinite; returned the last good state (try a lower "
                           "learning_rate or larger regularisation weights)")
            break
        total.backward()
        if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in mesh.params()):
            status = "diverged"
            stop_reason = (f"stopped at iteration {it}: the gradients became NaN or infinite; "
                           "returned the last good state (try a lower learning_rate)")
            break
        mesh.optimizer.step()
        with torch.no_grad():
            current = mesh.vertices()
            if not torch.isfinite(current).all():
                status = "diverged"
                stop_reason = (f"stopped at iteration {it}: the vertices became NaN or "
                               "infinite; returned the last good state (try a lower "
                               "learning_rate)")
                break
        last_good = mesh.snapshot()
        completed = it + 1
        record = {k: float(v.detach()) for k, v in terms.items()}
        record["total"] = float(total.detach())
        history.append({"iteration": completed, **record, "sigma": sigma,
                        "resolution": levels[level]})
        if on_progress is not None:
            stream = completed % options.stream_every == 0 or completed in (1, options.iterations)
            view_iou = [latest_iou[i] for i in prep.fit_idx]
            progress = Progress(
                iteration=completed, iterations=options.iterations, losses=record,
                mean_iou=float(np.mean(view_iou)), view_iou=view_iou,
                elapsed=time.perf_counter() - t_start,
            )
            if stream:
                progress.vertices = _to_world(last_good["vertices"], center, norm_scale)
                if faces_pending:
                    progress.faces = last_good["faces"].astype(np.int32)
                    faces_pending = False
            on_progress(progress)
    t_opt = time.perf_counter()

    final_vertices = last_good["vertices"]
    final_faces = torch.as_tensor(last_good["faces"], dtype=torch.long, device=device)
    fit_iou = _evaluate(final_vertices, final_faces, full_fit, prep.fit_idx, settings)
    heldout_iou = {}
    if prep.heldout_idx:
        full_held = _level_groups(prep, prep.heldout_idx, 1.0, center, norm_scale, False,
                                  device, dtype)
        heldout_iou = _evaluate(final_vertices, final_faces, full_held, prep.heldout_idx,
                                settings)
    t_end = time.perf_counter()

    if status == "done":
        stop_reason = f"finished {completed} iterations"
    mean_fit = float(np.mean([fit_iou[i] for i in prep.train_idx]))
    summary = f"{stop_reason}; mean IoU on the fitted views {mean_fit:.3f}"
    if heldout_iou:
        summary += f", on the held-out views {np.mean(list(heldout_iou.values())):.3f}"
    colors_out = last_good["colors"]
    return FitResult(
        vertices=_to_world(final_vertices, center, norm_scale),
        faces=last_good["faces"].astype(np.int32),
        colors=None if colors_out is None else colors_out.cpu().numpy().astype(np.float32),
        topology_changed=topology_changed,
        fit_iou={prep.names[i]: fit_iou[i] for i in prep.fit_idx},
        heldout_iou={prep.names[i]: heldout_iou[i] for i in prep.heldout_idx},
        mean_fit_iou=mean_fit,
        loss_history=history,
        timing={
            "init": t_init - t_start,
            "optimise": t_opt - t_loop,
            "evaluate": t_end - t_opt,
            "total": t_end - t_start,
            "per_iteration": (t_opt - t_loop) / max(completed, 1),
        },
        iterations=completed,
        device=device,
        status=status,
        message="; ".join([summary] + messages),
    )


def _initial_colors(prep: _Prepared, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex RGB (V, 3): the average of the target colours each vertex projects onto,
    over the views it faces (a cheap visibility test), inside the silhouettes; grey where
    no view sees it."""
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


def _to_world(vertices: torch.Tensor, center: np.ndarray, scale: float) -> np.ndarray:
    return (vertices.detach().cpu().double().numpy() * scale + center).astype(np.float32)


def _render_settings(prep: _Prepared, verts0: np.ndarray, options: FitOptions) -> RenderSettings:
    """Near/far around the initial mesh's depths in every view, generous enough for the fit."""
    cams = [prep.views[i].camera for i in prep.fit_idx + prep.heldout_idx]
    pts = torch.as_tensor(verts0, dtype=torch.float64)
    depths = []
    for cam in cams:
        z = project_points(pts, Cameras.from_matrices([cam], dtype=torch.float64))[0, :, 2]
        depths.append(z.numpy())
    z = np.concatenate(depths)
    extent = float(np.linalg.norm(verts0.max(axis=0) - verts0.min(axis=0)))
    far = max(float(z.max()), 0.0) + 2.0 * extent
    front = z[z > 0]
    near = max(float(front.min()) * 0.1 if len(front) else far * 1e-4, far * 1e-5)
    return RenderSettings(near=near, far=far,
                          lighting=Lighting() if options.lighting else None)


def _image_losses(verts, faces, colors, chosen: list[int], groups: dict[int, _Group],
                  settings: RenderSettings, latest_iou: dict[int, float]) -> dict:
    """Silhouette (and colour) loss over the chosen views, rendered in batches of one
    image size; records each rendered view's hard IoU in ``latest_iou``."""
    by_group: dict[int, tuple[_Group, list[int]]] = {}
    for i in chosen:
        g = groups[i]
        by_group.setdefault(id(g), (g, []))[1].append(g.indices.index(i))
    sil_terms, color_terms, weights = [], [], []
    for group, rows in by_group.values():
        rows_t = torch.as_tensor(rows, device=verts.device)
        cams = Cameras(group.cameras.intrinsics[rows_t], group.cameras.world_to_camera[rows_t],
                       group.cameras.orthographic[rows_t], group.cameras.width,
                       group.cameras.height)
        target = group.alpha[rows_t]
        if colors is not None:
            image = render(verts, faces, cams, colors, settings)
            alpha = image[..., 3]
            color_terms.append(losses.color_l1_loss(image[..., :3], group.rgb[rows_t], target))
        else:
            alpha = render_silhouette(verts, faces, cams, settings)
        sil_terms.append(losses.silhouette_iou_loss(alpha, target))
        weights.append(len(rows))
        with torch.no_grad():
            ious = losses.hard_iou(alpha, target).tolist()
        for r, iou in zip(rows, ious, strict=True):
            latest_iou[group.indices[r]] = float(iou)
    w = torch.tensor(weights, dtype=verts.dtype, device=verts.device) / sum(weights)
    out = {"silhouette": (torch.stack(sil_terms) * w).sum()}
    out["color"] = ((torch.stack(color_terms) * w).sum() if color_terms
                    else verts.new_zeros(()))
    return out


def _evaluate(verts, faces, groups: dict[int, _Group], indices, settings) -> dict[int, float]:
    """Hard IoU at full resolution (alpha > 0.5 vs target alpha > 0.5) per view index."""
    settings = dataclasses.replace(settings, sigma=EVAL_SIGMA)
    out = {}
    done = set()
    with torch.no_grad():
        for i in indices:
            g = groups[i]
            if id(g) in done:
                continue
            done.add(id(g))
            for start in range(0, len(g.indices), EVAL_BATCH):
                sl = slice(start, start + EVAL_BATCH)
                cams = Cameras(g.cameras.intrinsics[sl], g.cameras.world_to_camera[sl],
                               g.cameras.orthographic[sl], g.cameras.width, g.cameras.height)
                alpha = render_silhouette(verts, faces, cams, settings)
                for k, iou in zip(g.indices[sl], losses.hard_iou(alpha, g.alpha[sl]).tolist(),
                                  strict=True):
                    out[k] = float(iou)
    return out


def _coverage_warnings(prep: _Prepared, iou: dict[int, float], mesh_given: bool,
                       aligned: bool) -> list[str]:
    out = []
    unseen = [prep.names[i] for i in prep.train_idx if iou[i] == 0.0]
    if unseen:
        out.append(
            "the initial mesh does not overlap the silhouette in " + ", ".join(unseen)
            + ": if a camera does not look at the object, its view cannot be fitted"
        )
    mean = float(np.mean([iou[i] for i in prep.train_idx]))
    if mesh_given and not aligned and mean < 0.2:
        out.append(
            f"the initial mesh covers the silhouettes poorly (mean IoU {mean:.2f}); "
            "align_initial=True moves and scales it onto them first"
        )
    return out
