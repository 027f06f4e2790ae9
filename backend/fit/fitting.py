"""Fit a triangle mesh to posed RGBA images (alpha = silhouette) with the soft rasterizer.

    result = fit([View(camera, image), ...], vertices, faces, FitOptions(iterations=300))

numpy in, numpy out; no bpy. The optimiser moves every vertex (by default through
the large-steps parameterisation, `backend.fit.large_steps`; else offsets from the
initial mesh with Adam) plus a global translation and scale, minimising
``1 - soft IoU`` of the silhouettes (and an L1 colour term when fitting colours)
plus geometric regularisers (`backend.fit.losses`). It runs coarse to fine: the first
iterations render downsampled images (intrinsics scaled, targets area-averaged)
with soft edges, later ones full-resolution images with sharp edges. With
``topology="adapt"`` (the default) the mesh is remeshed every few steps toward edges
a few pixels long at the current resolution (`backend.fit.adaptive`), so any closed
start (Blender's default cube included) can reach the shape; "keep" keeps the faces.

All geometry is optimised in a normalised frame (the initial mesh centred, about two
units across), so learning rate and loss weights do not depend on the scene's scale.

This module is the algorithm in one function and the public API; the parts live in
`inputs` (views, device, initial mesh), `targets` (images per resolution level),
`schedule` (each iteration's settings), `state` (the optimised parameters),
`loop` (the iterations), `adaptive` (remeshing) and `evaluation` (hard IoU).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.options import FitError, FitOptions
from .adaptive import AdaptiveTopology, check_adaptable, hull_genus_to_check, topology_advice
from .camera_refine import ViewCorrection, correction_messages, refinement_for
from .evaluation import coverage_warnings, evaluate
from .inputs import (
    InitialMesh,
    Prepared,
    View,
    auto_init_faces,
    initial_colors,
    initial_mesh,
    prepare_views,
    render_settings,
    resolve_device,
)
from .joint_polish import polish_fit
from .loop import LoopResult, Progress, ProgressReporter, optimise
from .quality import quality_stats
from .schedule import Schedule, start_lr_scale
from .silhouette_calibration import pre_calibrate
from .state import MeshState
from .targets import Frame, TrainingTargets, view_groups

__all__ = ["FitError", "FitOptions", "FitResult", "Progress", "View", "auto_init_faces", "fit",
           "resolve_device"]


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
    # per refined view (options.refine_cameras), in the training views' order
    camera_corrections: list[ViewCorrection] = field(default_factory=list)


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
    on_progress gets a `Progress` after every iteration; should_stop is polled before
    each one.
    """
    t_start = time.perf_counter()
    options = options or FitOptions()
    if not isinstance(options, FitOptions):
        raise FitError("options must be a FitOptions (FitOptions.from_dict for plain data)")
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    prep = prepare_views(views)
    solved = pre_calibrate(prep, options)  # cameras from the silhouettes' tangencies
    if solved is not None:
        prep = dataclasses.replace(solved.prep, messages=solved.prep.messages + [solved.message])
    start = initial_mesh(prep, vertices, faces, options)
    frame = Frame.around(start.vertices)
    t_init = time.perf_counter()

    if options.topology == "adapt":
        check_adaptable(start.faces)

    state = _initial_state(prep, start, frame, options, device)
    settings = render_settings(prep, start.vertices, options)
    schedule = Schedule(options, min(prep.train_sides()), max(prep.train_sides()))
    hull_genus = hull_genus_to_check(prep, options, vertices is not None)
    adaptive = AdaptiveTopology.create(prep, frame, schedule.levels, options, hull_genus)
    targets = TrainingTargets(prep, schedule.levels, frame, options.fit_colors, device)
    full_fit = view_groups(prep, prep.fit_idx, 1.0, frame, False, device)
    # Hard IoU of every non-held-out view, refreshed whenever the loop renders it.
    iou = evaluate(state.vertices().detach(), state.faces, full_fit, settings)
    messages = prep.messages + start.messages + coverage_warnings(
        prep, iou, vertices is not None, options.align_initial or start.aligned)
    start_iou = float(np.mean([iou[i] for i in prep.train_idx]))
    lr_scale = start_lr_scale(start_iou)
    if lr_scale < 1.0:
        state.scale_learning_rates(lr_scale)
        messages.append(f"the start already matches the silhouettes (IoU {start_iou:.3f}): "
                        f"learning rates at {lr_scale:.2f}x so the first steps keep it")

    new_faces = start.given_faces is None or adaptive is not None
    reporter = ProgressReporter(on_progress, options, prep.fit_idx, frame, t_start, new_faces)
    refinement = refinement_for(prep, frame, options, device, *(
        (solved.world, solved.solved) if solved is not None else ()))
    run = optimise(state, schedule, targets, settings, options, iou, reporter, should_stop,
                   adaptive, refinement)
    if refinement is not None and options.polish_steps and run.status == "done":
        def stream(snapshot, objective):  # the viewport follows the polish
            reporter.send(run.completed, {"polish": objective}, iou, snapshot)

        run, polished = polish_fit(run, refinement, targets, settings, options, should_stop,
                                   stream)
        messages.append(polished)
    t_opt = time.perf_counter()

    corrections = []
    if refinement is not None:
        # the mesh where the cameras as given put it (the gauge), then the fitted views
        # measured through their refined cameras
        kept, carried = refinement.keep_reconstruction(run.last_good.vertices)
        run = dataclasses.replace(run, last_good=dataclasses.replace(run.last_good,
                                                                     vertices=kept))
        full_fit = [refinement.corrected(group) for group in full_fit]
        corrections = refinement.report(kept, frame.to_world_matrix())
        messages += [carried] + correction_messages(corrections)
    final = run.last_good
    final_faces = torch.as_tensor(final.faces, dtype=torch.long, device=device)
    fit_iou = evaluate(final.vertices, final_faces, full_fit, settings)
    heldout_iou = {}
    if prep.heldout_idx:
        heldout = view_groups(prep, prep.heldout_idx, 1.0, frame, False, device)
        heldout_iou = evaluate(final.vertices, final_faces, heldout, settings)
    t_end = time.perf_counter()

    timing = {"init": t_init - t_start, "optimise": run.seconds, "evaluate": t_end - t_opt,
              "total": t_end - t_start, "per_iteration": run.seconds / max(run.completed, 1)}
    world = frame.to_world(final.vertices)
    messages += (adaptive.messages if adaptive is not None else []) + topology_advice(
        prep, world, final.faces, options, vertices is not None, hull_genus)
    messages.append(_quality_summary(world, final.faces))
    result = _result(prep, frame, run, fit_iou, heldout_iou, new_faces or run.topology_changed,
                     timing, device, messages + run.messages)
    result.camera_corrections = corrections
    return result


def _quality_summary(world: np.ndarray, faces: np.ndarray) -> str:
    """One line on the triangles' shape: minimum angles (degrees), for the report."""
    stats = quality_stats(world, faces)
    return (f"{int(stats['faces'])} faces, smallest angles: 5th percentile "
            f"{stats['min_angle_p5']:.0f} deg, mean {stats['min_angle_mean']:.0f} deg, "
            f"{stats['pct_under_10']:.1f}% under 10 deg")


def _initial_state(prep: Prepared, start: InitialMesh, frame: Frame, options: FitOptions,
                   device: str) -> MeshState:
    """The parameters at the initial mesh, in the normalised frame, float32 on ``device``."""
    dtype = torch.float32
    base = torch.tensor(frame.normalise(start.vertices), dtype=dtype, device=device)
    colors = None
    if options.fit_colors:
        colors = torch.tensor(initial_colors(prep, start.vertices, start.faces), dtype=dtype,
                              device=device)
    return MeshState(base, start.faces, options, colors)


def _result(prep: Prepared, frame: Frame, run: LoopResult, fit_iou: dict[int, float],
            heldout_iou: dict[int, float], topology_changed: bool, timing: dict[str, float],
            device: str, messages: list[str]) -> FitResult:
    """The `FitResult` of a finished loop, IoUs by view index, in world space."""
    mean_fit = float(np.mean([fit_iou[i] for i in prep.train_idx]))
    summary = (f"{run.reason or f'finished {run.completed} iterations'}; "
               f"mean IoU on the fitted views {mean_fit:.3f}")
    if heldout_iou:
        summary += f", on the held-out views {np.mean(list(heldout_iou.values())):.3f}"
    colors = run.last_good.colors
    return FitResult(
        vertices=frame.to_world(run.last_good.vertices),
        faces=run.last_good.faces.astype(np.int32),
        colors=None if colors is None else colors.cpu().numpy().astype(np.float32),
        topology_changed=topology_changed,
        fit_iou={prep.names[i]: fit_iou[i] for i in prep.fit_idx},
        heldout_iou={prep.names[i]: heldout_iou[i] for i in prep.heldout_idx},
        mean_fit_iou=mean_fit,
        loss_history=run.history,
        timing=timing,
        iterations=run.completed,
        device=device,
        status=run.status,
        message="; ".join([summary] + messages),
    )
