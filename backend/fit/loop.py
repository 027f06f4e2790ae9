"""The optimisation loop: each iteration asks the schedule for its settings, may change
the mesh's topology, renders a few views, takes one optimiser step on the weighted losses
and reports progress; it stops early when cancelled or when anything becomes NaN.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.options import FitOptions
from ..render.renderer import RenderSettings, render, render_silhouette
from . import losses
from .adaptive import AdaptiveTopology
from .camera_refine import CameraRefinement
from .remesh import untangle
from .schedule import Schedule, Step, ViewSampler
from .state import MeshState, Snapshot
from .targets import Frame, TrainingTargets, ViewGroup, batches

# Detect-and-smooth rounds at the end of the fit (one round every ``remesh_every``
# iterations before): the returned surface should not pass through itself.
FINAL_UNTANGLE_ROUNDS = 20


@dataclass
class Progress:
    """Sent to ``on_progress`` after every iteration.

    losses: each weighted-before term's value and "total". view_iou: the latest hard
    IoU of each non-held-out view in input order (measured at the resolution the view
    was last rendered at). vertices: (V, 3) float32 world-space every
    ``stream_every`` iterations (and the first and last), else None. faces: (F, 3)
    int32 whenever the topology differs from the last faces the caller knows (at
    first: the faces it gave, none for a mesh made from the silhouettes), else None.
    """

    iteration: int
    iterations: int
    losses: dict[str, float]
    mean_iou: float
    view_iou: list[float]
    elapsed: float
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None


class ProgressReporter:
    """Turns each completed iteration into a `Progress` for ``on_progress`` (if given).

    new_faces: the fit starts from faces the caller does not know (a mesh made from
    the silhouettes, or a repaired one): the first streamed vertices carry them.
    """

    def __init__(self, on_progress: Callable[[Progress], None] | None, options: FitOptions,
                 fit_idx: list[int], frame: Frame, t_start: float, new_faces: bool):
        self.on_progress = on_progress
        self.iterations, self.stream_every = options.iterations, options.stream_every
        self.fit_idx, self.frame, self.t_start = fit_idx, frame, t_start
        self._faces_pending = new_faces

    def topology_changed(self) -> None:
        """The next streamed vertices carry the new faces."""
        self._faces_pending = True

    def send(self, completed: int, record: dict[str, float], iou: dict[int, float],
             last_good: Snapshot) -> None:
        """completed: iterations done; record: the losses; iou: latest hard IoU by view."""
        if self.on_progress is None:
            return
        view_iou = [iou[i] for i in self.fit_idx]
        progress = Progress(
            iteration=completed, iterations=self.iterations, losses=record,
            mean_iou=float(np.mean(view_iou)), view_iou=view_iou,
            elapsed=time.perf_counter() - self.t_start,
        )
        if completed % self.stream_every == 0 or completed in (1, self.iterations):
            progress.vertices = self.frame.to_world(last_good.vertices)
            if self._faces_pending:
                progress.faces = last_good.faces.astype(np.int32)
                self._faces_pending = False
        self.on_progress(progress)


@dataclass
class LoopResult:
    """How the loop ended. status: "done" | "cancelled" | "diverged"; reason: why it
    stopped (empty when done); last_good: the state after the last completed iteration;
    history: one record of losses and settings per completed iteration; messages: what
    it skipped; seconds: the loop's wall time."""

    status: str
    reason: str
    completed: int
    last_good: Snapshot
    history: list[dict[str, float]]
    topology_changed: bool
    messages: list[str]
    seconds: float


def optimise(state: MeshState, schedule: Schedule, targets: TrainingTargets,
             settings: RenderSettings, options: FitOptions, iou: dict[int, float],
             reporter: ProgressReporter, should_stop: Callable[[], bool] | None,
             adaptive: AdaptiveTopology | None = None,
             refinement: CameraRefinement | None = None) -> LoopResult:
    """Run ``options.iterations`` iterations on ``state``; ``iou`` (hard IoU by view index)
    is updated with every view rendered; ``adaptive`` remeshes between iterations;
    ``refinement`` corrects the training cameras alongside the mesh."""
    sampler = ViewSampler(targets.prep.train_idx, options.views_per_step, options.seed)
    history, messages = [], []
    last_good = state.snapshot()
    status, reason, completed, topology_changed = "done", "", 0, False
    t_loop = time.perf_counter()
    # Only a remeshed fit is untangled: a mesh kept as given may cross itself on purpose.
    # Nor is one whose cameras are refined: their disagreement makes folds that the joint
    # solve resolves, and smoothing them fights it (refined held-out IoU on the test torus:
    # 0.928 without untangling, 0.905 with it, 0.847 untangling only at the end).
    untangling = options.untangle and adaptive is not None and refinement is None
    for it in range(options.iterations):
        if should_stop is not None and should_stop():
            status, reason = "cancelled", f"cancelled after {it} iterations"
            break
        step = schedule.at(it)
        changed, skipped = _change_topology(state, step, options, adaptive)
        messages += skipped
        if untangling and it % options.remesh_every == 0:
            _untangle(state, rounds=1)  # moves vertices only; the faces stay
        if changed:
            topology_changed = True
            reporter.topology_changed()
            last_good = state.snapshot()
        state.set_lr_factor(step.lr_factor)
        # The curvature and unseen-area terms flatten what the finest level's silhouettes
        # leave loose; through the coarse levels they would stiffen a rough start that
        # still has far to go.
        finest = step.level == len(schedule.levels) - 1
        chosen = sampler.next()
        terms, total, step_iou = _iteration(state, targets.at(step.level), chosen,
                                            dataclasses.replace(settings, sigma=step.sigma),
                                            options, refinement, finest=finest)
        if refinement is not None:
            refinement.step(step.lr_factor, step.camera_ramp, chosen)
        bad = _non_finite(terms, state.params() + (refinement.params() if refinement else []))
        if bad:
            status, reason = "diverged", _divergence_message(it, bad)
            break
        iou.update(step_iou)
        last_good = state.snapshot()
        completed = it + 1
        record = {k: float(v.detach()) for k, v in terms.items()}
        record["total"] = float(total.detach())
        history.append({"iteration": completed, **record, "sigma": step.sigma,
                        "resolution": step.resolution})
        reporter.send(completed, record, iou, last_good)
    if untangling and completed and status != "diverged":
        moved, left = _untangle(state, rounds=FINAL_UNTANGLE_ROUNDS)
        last_good = state.snapshot() if moved else last_good
        if left:
            messages.append(f"{left} pairs of triangles still cross after untangling (the "
                            "surface passes through itself there)")
    return LoopResult(status, reason, completed, last_good, history, topology_changed, messages,
                      time.perf_counter() - t_loop)


def _untangle(state: MeshState, rounds: int) -> tuple[bool, int]:
    """Smooth the shape where it passes through itself (`remesh.untangle`), optimiser
    moments kept; (whether vertices moved, crossing pairs left)."""
    with torch.no_grad():
        shape = state.shape().detach()
    untangled, left = untangle(shape, state.faces, rounds)
    if torch.equal(untangled, shape):
        return False, left
    logits = None if state.color_logits is None else state.color_logits.detach()
    state.set_mesh(untangled, state.faces_np, logits, state.vertex_moments())
    return True, left


def _change_topology(state: MeshState, step: Step, options: FitOptions,
                     adaptive: AdaptiveTopology | None) -> tuple[bool, list[str]]:
    """The one place the mesh's topology changes, between iterations: adaptive remeshing
    when due, and the scheduled subdivisions. Returns (whether it changed, messages about
    changes skipped)."""
    if adaptive is not None and adaptive.due(step):
        return adaptive.remesh(state, step), []
    if not step.subdivide:
        return False, []
    if 4 * len(state.faces_np) > options.max_faces:
        return False, [f"skipped the subdivision at iteration {step.iteration}: "
                       f"{4 * len(state.faces_np)} faces would exceed "
                       f"max_faces={options.max_faces}"]
    state.subdivide()
    return True, []


def _iteration(state: MeshState, groups: list[ViewGroup], chosen: list[int],
               settings: RenderSettings, options: FitOptions,
               refinement: CameraRefinement | None = None, finest: bool = True):
    """One Adam step on the chosen views (view indices); the camera corrections'
    gradients are left for ``refinement.step``; ``finest``: include the terms that act
    only at the finest level (curvature, unseen area). Returns (the loss terms, their
    weighted total, the hard IoU of each view rendered by view index)."""
    state.zero_grad()
    if refinement is not None:
        refinement.zero_grad()
    terms, step_iou = image_losses(state.vertices(), state.faces, state.colors(),
                                   batches(groups, chosen), settings, refinement)
    terms.update(geometry_losses(state, finest))
    if finest and options.unseen_weight > 0:
        terms["unseen"] = _unseen_area(state, groups)
    if refinement is not None:
        terms["camera"] = refinement.regulariser()
    weights = {"silhouette": options.silhouette_weight, "color": options.color_weight,
               "laplacian": options.laplacian_weight, "flatten": options.flatten_weight,
               "edge": options.edge_weight, "normal": options.normal_weight,
               "curvature": options.curvature_weight, "camera": options.camera_weight,
               "unseen": options.unseen_weight}
    total = sum(weights[k] * v for k, v in terms.items())
    total.backward()
    state.step()
    return terms, total, step_iou


def image_losses(vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None,
                 view_batches: list[tuple[ViewGroup, list[int]]], settings: RenderSettings,
                 refinement: CameraRefinement | None = None):
    """Silhouette (and colour) loss over batches of views of one image size each.

    vertices: (V, 3) normalised frame; faces: (F, 3) int64; colors: (V, 3) or None.
    Returns ({"silhouette", "color"} scalar tensors, each the mean over the views
    rendered; the hard IoU of every rendered view by view index).
    """
    sil_terms, color_terms, weights, ious = [], [], [], {}
    for group, rows in view_batches:
        cams = group.cameras.select(rows)
        if refinement is not None:
            cams = refinement.apply(cams, [group.indices[r] for r in rows])
        target_rows = torch.as_tensor(rows, device=vertices.device)
        target = group.alpha[target_rows]
        if colors is not None:
            image = render(vertices, faces, cams, colors, settings)
            alpha = image[..., 3]
            color_terms.append(losses.color_l1_loss(image[..., :3], group.rgb[target_rows],
                                                    target))
        else:
            alpha = render_silhouette(vertices, faces, cams, settings)
        sil_terms.append(losses.silhouette_iou_loss(alpha, target))
        weights.append(len(rows))
        with torch.no_grad():
            batch_iou = losses.hard_iou(alpha, target).tolist()
        ious.update((group.indices[r], float(v)) for r, v in zip(rows, batch_iou, strict=True))
    w = torch.tensor(weights, dtype=vertices.dtype, device=vertices.device) / sum(weights)
    terms = {"silhouette": (torch.stack(sil_terms) * w).sum()}
    terms["color"] = ((torch.stack(color_terms) * w).sum() if color_terms
                      else vertices.new_zeros(()))
    return terms, ious


def geometry_losses(state: MeshState, curvature: bool = True) -> dict[str, torch.Tensor]:
    """The regularisers of the current shape (normalised frame, before the transform);
    ``curvature``: include the curvature term (when its weight is not 0)."""
    shape = state.shape()
    terms = {
        "laplacian": state.laplacian_loss(),
        "flatten": losses.flatten_loss(shape, state.adjacency),
        "edge": losses.edge_length_loss(shape, state.edges, state.edge_target),
        "normal": losses.normal_consistency_loss(shape, state.faces, state.adjacency),
    }
    if curvature and state.options.curvature_weight > 0:  # the one costing a sparse product
        terms["curvature"] = losses.curvature_variation_loss(shape, state.faces, state.laplacian,
                                                             state.edges)
    return terms


def _unseen_area(state: MeshState, groups: list[ViewGroup]) -> torch.Tensor:
    """`losses.unseen_area_loss` of the shape, through the vertices that every fitting
    view (``groups``) sees away from edge-on (`losses.face_on_weights`), in square pixels
    of the views at this level: a vertex's pull then matches the silhouettes' whatever
    the mesh's size in the images (in the normalised frame's units the same weight was
    40x stronger at 48 px than at 320 px, and collapsed a thin object)."""
    poses = torch.cat([g.cameras.world_to_camera for g in groups])
    orthographic = torch.cat([g.cameras.orthographic for g in groups])
    centres = -torch.linalg.solve(poses[:, :3, :3], poses[:, :3, 3:])[..., 0]
    forward = poses[:, 2, :3] / poses[:, 2, :3].norm(dim=1, keepdim=True)
    directions = torch.where(orthographic[:, None], forward, torch.zeros_like(forward))
    weights = losses.face_on_weights(state.vertices(), state.faces, centres, directions)
    focal = torch.cat([g.cameras.intrinsics[:, 0, 0] for g in groups]).abs()
    # a pixel's size at the object (the normalised frame's origin): distance / focal; for
    # an orthographic view 1 / (focal x the pose's scale, the norm of a rotation row)
    depth = torch.where(orthographic, 1.0 / poses[:, 0, :3].norm(dim=1), centres.norm(dim=1))
    pixel = float((depth / focal).mean())
    return losses.unseen_area_loss(state.shape(), state.faces, weights) / pixel ** 2


def _non_finite(terms: dict[str, torch.Tensor], params: list[torch.Tensor]) -> list[str]:
    """The loss terms that are NaN or infinite, and "parameters" if any parameter is
    (after the step); one device sync for all of them."""
    checks = {name: torch.isfinite(value) for name, value in terms.items()}
    checks["parameters"] = torch.stack([torch.isfinite(p).all() for p in params]).all()
    finite = torch.stack(list(checks.values())).tolist()
    return [name for name, ok in zip(checks, finite, strict=True) if not ok]


def _divergence_message(iteration: int, bad: list[str]) -> str:
    terms = [name for name in bad if name != "parameters"]
    what = (f"the loss term(s) {', '.join(terms)}" if terms
            else "the vertices or colours (their gradients)")
    return (f"stopped at iteration {iteration}: {what} became NaN or infinite; returned the "
            "last good state (try a lower learning_rate or larger regularisation weights)")
