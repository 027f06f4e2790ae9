"""Adaptive topology during the fit (``FitOptions.topology == "adapt"``).

Every ``remesh_every`` iterations the mesh is remeshed (`backend.fit.remesh`: collapses,
splits, flips, then tangential relaxation) toward per-vertex edge lengths of
``edge_pixels`` pixels in the training views at the iteration's resolution level, so
the coarse levels keep a coarse mesh and the finer levels add triangles where the
images resolve detail; shorter where the surface curves tightly, so a thin leg keeps
enough edges around not to collapse into a wire (`curvature_lengths`). A face budget
bounds the edge lengths from below and stops splits. The optimisers' per-vertex moments
follow the vertices (`MeshState.set_mesh`), and the mesh stays a closed, oriented
manifold at every step (`remesh` checks it).

The last iterations (after ``REMESH_UNTIL`` of them) keep the topology so the final
mesh settles on the silhouettes.

Remeshing keeps the genus. When a start may lack the holes the silhouettes show (a mesh
given by the caller, or the "sphere" start), the first remesh after the coarsest resolution
level (``CARVE_LEVEL``) compares the mesh's genus with the coarse visual hull's; if the hull has
more through-holes, the mesh is re-carved: replaced by the boundary of (inside the mesh)
AND (inside the hull) (`backend.fit.recarve`), which removes the membrane a genus-0 start
stretches across a hole and keeps the shape fitted so far. The optimisers restart there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..core.options import FitError, FitOptions
from .inputs import Prepared, silhouettes
from .losses import mean_curvature
from .mesh_ops import check_mesh, edges, face_areas
from .recarve import carve_into_hull
from .remesh import edge_length_for_faces, pixel_target_lengths, remesh, tangential_relaxation
from .schedule import Step
from .state import MeshState
from .targets import Frame
from .visual_hull import HullResult, visual_hull

REMESH_UNTIL = 0.8  # fraction of the iterations after which the topology stays fixed
RELAXATION = 0.5  # tangential relaxation weight after each remesh
MIN_BUDGET = 500  # faces: the automatic budget never goes below this
SURFACE_PER_SILHOUETTE = 12.0  # a convex body's area is 4x its mean projection (Cauchy); 3x more
# `curvature_lengths`: edges at most this over the mean curvature. Table, 128 px, held-out
# IoU from the five starts: none 0.956-0.963 (the hull start 0.942-0.962 as its legs did or
# did not break), 0.5 0.959-0.964, 0.25 0.960-0.963 with 30% more faces and 136 crossing
# pairs from the hull.
CURVATURE_EDGE = 0.5
COARSE_EDGE_FACTOR = 4.0  # kept edges this many times edge_pixels are "too coarse"
# The hull carved to count the silhouettes' through-holes. Its genus is the targets' at
# 500-8000 faces (benchmarks/bench_fit.py's at 128x128 and 320x240: torus 1; Suzanne, Spot,
# the table 0), so a low-resolution hull shows no spurious tunnel there.
GENUS_HULL_FACES = 2000
# The resolution level (0: the coarsest) whose first remesh may re-carve (`open_holes`).
# Torus, held-out IoU from the cube and the icosphere: at level 1 0.969-0.974 (96 px, 12
# views), 0.983 (128 px, UV sphere and sphere starts); at the last level (full size, after
# the coarse levels) 0.965-0.967 and 0.980-0.982: earlier leaves more iterations to refit.
CARVE_LEVEL = 1


def face_budget(prep: Prepared, options: FitOptions) -> int:
    """The fit's face budget: ``options.face_budget``, or (0) enough equilateral faces
    of ``edge_pixels`` to tile SURFACE_PER_SILHOUETTE times the largest training
    silhouette's pixel area, between MIN_BUDGET and ``max_faces``."""
    if options.face_budget:
        return min(options.face_budget, options.max_faces)
    area = max(float((np.asarray(prep.views[i].image)[..., 3] > 0.5).sum())
               for i in prep.train_idx)
    triangle = math.sqrt(3.0) / 4.0 * options.edge_pixels ** 2
    wanted = round(SURFACE_PER_SILHOUETTE * area / triangle)
    return int(min(options.max_faces, max(MIN_BUDGET, wanted)))


def check_adaptable(faces: np.ndarray) -> None:
    """FitError unless faces (F, 3) form a closed, consistently oriented manifold, which
    remeshing needs."""
    report = check_mesh(faces)
    if not report.closed_manifold or report.inconsistent_edges:
        raise FitError(
            "adaptive topology needs a closed (watertight) manifold mesh, but the initial mesh "
            f"has {'; '.join(report.describe())}: close it, fit it with topology='keep' "
            "(Keep Topology), or start from the visual hull")


def topology_advice(prep: Prepared, world: np.ndarray, faces: np.ndarray,
                    options: FitOptions, mesh_given: bool, hull_genus: int | None) -> list[str]:
    """Messages about the fitted mesh's topology: a genus the silhouettes contradict (their
    visual hull has ``hull_genus`` through-holes, more than the mesh) and, for a given mesh
    kept as it is, triangles too large for the images.

    world: (V, 3) the fitted vertices; faces: (F, 3); mesh_given: the caller gave the
    start (else it was made from the silhouettes, `options.init`); hull_genus: from
    `hull_genus_to_check` (None: the start has the hull's genus).
    """
    out = []
    mesh_genus = genus(faces, len(world))
    if hull_genus is not None and hull_genus > mesh_genus:
        adapt = ("" if options.topology == "adapt" else
                 ", or let the fit re-carve the mesh (Adapt, topology='adapt')")
        out.append(f"the silhouettes show {hull_genus} through-hole(s) but the fitted mesh "
                   f"has {mesh_genus}: start from the Visual Hull (no initial mesh, "
                   f"init='hull'), which keeps them{adapt}")
    if mesh_given and options.topology == "keep":
        pixels = float(np.median(pixel_edge_lengths(prep, world, faces)))
        if pixels > COARSE_EDGE_FACTOR * options.edge_pixels:
            out.append(f"the mesh is too coarse for the images (median edge {pixels:.0f} px): "
                       "Adapt (topology='adapt', no Keep Topology) adds triangles where the "
                       "images show detail")
    return out


def hull_genus_to_check(prep: Prepared, options: FitOptions, mesh_given: bool) -> int | None:
    """The genus of a coarse visual hull of the training silhouettes (0 if it cannot be
    carved) when the start may lack its holes: a mesh given by the caller, or the sphere
    start; None for the hull start, which has the hull's genus."""
    if not (mesh_given or options.init == "sphere"):
        return None
    try:
        hull = visual_hull(silhouettes(prep), target_faces=GENUS_HULL_FACES)
    except ValueError:
        return 0
    return genus(hull.faces, len(hull.vertices))


def curvature_lengths(vertices: torch.Tensor, faces: torch.Tensor,
                      laplacian: torch.Tensor) -> np.ndarray:
    """Edge lengths (V,) float64, in the vertices' units, that keep tightly curved parts
    resolved: CURVATURE_EDGE over each vertex's absolute mean curvature averaged over its
    ring. vertices (V, 3) float, faces (F, 3) int64, laplacian: the mesh's sparse uniform
    Laplacian (V, V) (`backend.fit.mesh_ops.laplacian`).

    Pixel-sized targets alone are as long at the coarse levels as a table leg is wide, so
    collapses turn the leg into a wire of two or three edges around, and the leg breaks
    when the finer levels inflate it again. On a cylinder of radius r the mean curvature
    is 1 / 2r, so the edges stay at most r long: about six around.
    """
    with torch.no_grad():
        curvature = mean_curvature(vertices.detach(), faces, laplacian).abs()
        ring_mean = curvature - torch.sparse.mm(laplacian, curvature[:, None])[:, 0]
    return CURVATURE_EDGE / np.maximum(ring_mean.cpu().double().numpy(), 1e-12)


def pixel_edge_lengths(prep: Prepared, world: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Each edge's length (E,) in pixels of the finest full-size training view that sees it."""
    e = edges(faces)
    cameras = [prep.views[i].camera for i in prep.train_idx]
    per_pixel = pixel_target_lengths(world, cameras, 1.0)  # scene length of one pixel
    length = np.linalg.norm(world[e[:, 0]] - world[e[:, 1]], axis=1)
    return length / (0.5 * (per_pixel[e[:, 0]] + per_pixel[e[:, 1]]))


def genus(faces: np.ndarray, n_vertices: int) -> int:
    """Total genus of a closed manifold mesh (F, 3): sum over components of handles."""
    components = check_mesh(faces).components
    euler = n_vertices - len(edges(faces)) + len(faces)
    return max(0, (2 * components - euler) // 2)


@dataclass
class AdaptiveTopology:
    """Remeshing toward pixel-sized edges; ``remesh(state, step)`` when ``due(step)``."""

    prep: Prepared
    frame: Frame
    levels: list[float]
    options: FitOptions
    budget: int
    hull_genus: int | None = None  # the silhouettes' through-holes, to open if the mesh lacks
    remeshes: int = 0
    holes_checked: bool = False
    messages: list[str] = field(default_factory=list)  # for the fit's report

    @staticmethod
    def create(prep: Prepared, frame: Frame, levels: list[float], options: FitOptions,
               hull_genus: int | None = None) -> AdaptiveTopology | None:
        """The remesher of an adaptive fit, or None when the topology is kept.

        hull_genus: `hull_genus_to_check`'s, or None not to re-carve (`open_holes`)."""
        if options.topology != "adapt":
            return None
        return AdaptiveTopology(prep, frame, levels, options, face_budget(prep, options),
                                hull_genus)

    def due(self, step: Step) -> bool:
        last = REMESH_UNTIL * self.options.iterations
        return step.iteration % self.options.remesh_every == 0 and step.iteration < last

    def target_lengths(self, state: MeshState, level: int) -> torch.Tensor:
        """Per-vertex edge targets (V,) in the state's shape frame (before the global
        transform): ``edge_pixels`` in the finest view at ``level``, shorter where the
        surface curves tightly (`curvature_lengths`), no shorter than the face budget
        allows."""
        scale = self.levels[level]
        cameras = []
        for i in self.prep.train_idx:
            cam = self.prep.views[i].camera
            cameras.append(cam.resized(max(1, round(cam.width * scale)),
                                       max(1, round(cam.height * scale))))
        with torch.no_grad():
            world = self.frame.to_world(state.vertices())
            shape = state.shape().detach()
            to_shape = self.frame.scale * float(torch.exp(state.log_scale))
        lengths = pixel_target_lengths(world, cameras, self.options.edge_pixels) / to_shape
        lengths = np.minimum(lengths, curvature_lengths(shape, state.faces, state.laplacian))
        area = float(face_areas(shape.cpu().double().numpy(), state.faces_np).sum())
        floor = edge_length_for_faces(area, self.budget)
        return torch.as_tensor(np.maximum(lengths, floor), dtype=shape.dtype,
                               device=shape.device)

    def remesh(self, state: MeshState, step: Step) -> bool:
        """Remesh ``state`` in place toward `target_lengths` (re-carved first when
        `open_holes` is due); True (the faces changed)."""
        if (self.hull_genus is not None and not self.holes_checked
                and step.level >= min(CARVE_LEVEL, len(self.levels) - 1)):
            self.open_holes(state, step.iteration)
        target = self.target_lengths(state, step.level)
        moments = state.vertex_moments()
        carried = {f"{group}/{name}": x for group, xs in moments.items() for name, x in xs.items()}
        if state.color_logits is not None:
            carried["color_logits"] = state.color_logits.detach()
        with torch.no_grad():
            result = remesh(state.shape().detach(), state.faces, target, carried,
                            max_faces=self.budget)
            shape = tangential_relaxation(result.vertices, result.faces, RELAXATION)
        new_moments = {group: {name: result.attributes[f"{group}/{name}"] for name in xs}
                       for group, xs in moments.items()}
        state.set_mesh(shape, result.faces.cpu().numpy(), result.attributes.get("color_logits"),
                       new_moments)
        self.remeshes += 1
        return True

    def open_holes(self, state: MeshState, iteration: int) -> None:
        """Once: when the silhouettes' hull has more through-holes than ``state``'s mesh,
        replace the mesh by its intersection with the hull (`carve_into_hull`) at about
        its face count, or by the hull itself if the intersection does not open them.
        The global transform carries over; the optimisers restart. What was done goes to
        ``messages``."""
        self.holes_checked = True
        mesh_genus = genus(state.faces_np, len(state.shape_param))
        if self.hull_genus <= mesh_genus:
            return
        with torch.no_grad():
            world = self.frame.to_world(state.vertices()).astype(np.float64)
        sil = silhouettes(self.prep)
        target_faces = min(max(len(state.faces_np), GENUS_HULL_FACES), self.budget)
        candidates = (
            ("re-carved from", lambda: carve_into_hull(sil, world, state.faces_np, target_faces)),
            ("replaced by", lambda: visual_hull(sil, target_faces=target_faces)))
        news = f"the silhouettes show {self.hull_genus} through-hole(s); the mesh was"
        failures = []
        for verb, make in candidates:
            try:
                mesh = _opening(make(), mesh_genus)
            except ValueError as exc:
                failures.append(str(exc))
                continue
            _replace_mesh(state, self.frame, world, mesh)
            why = f"; re-carving it failed: {failures[0]}" if failures else ""
            self.messages.append(f"{news} {verb} the visual hull at iteration {iteration} (the "
                                 f"optimiser restarted there){why}")
            return
        self.messages.append(f"{news} kept: neither re-carving it nor the visual hull opens them "
                             f"({'; '.join(failures)})")


def _opening(mesh: HullResult, mesh_genus: int) -> HullResult:
    """``mesh`` if it is a closed, oriented manifold of a genus above ``mesh_genus``;
    else ValueError saying what it is."""
    report = check_mesh(mesh.faces)
    carved_genus = genus(mesh.faces, len(mesh.vertices))
    if not report.closed_manifold or report.inconsistent_edges or carved_genus <= mesh_genus:
        defects = "; ".join(report.describe()) or "a closed manifold"
        raise ValueError(f"it gave {defects} of genus {carved_genus}")
    return mesh


def _replace_mesh(state: MeshState, frame: Frame, world: np.ndarray, mesh: HullResult) -> None:
    """Put ``mesh`` (world space) into ``state`` under its current global transform; the
    colours come from the nearest of the old vertices (world (V, 3))."""
    with torch.no_grad():
        scale, translation = torch.exp(state.log_scale), state.translation
        shape = (torch.as_tensor(frame.normalise(mesh.vertices), dtype=scale.dtype,
                                 device=scale.device) - translation) / scale
    logits = None
    if state.color_logits is not None:
        logits = _nearest_rows(world, mesh.vertices, state.color_logits.detach())
    state.set_mesh(shape, mesh.faces, logits)


def _nearest_rows(points: np.ndarray, queries: np.ndarray, values: torch.Tensor) -> torch.Tensor:
    """The rows of ``values`` (V, C) at the points (V, 3) nearest each query (Q, 3)."""
    _, nearest = cKDTree(points).query(queries)
    return values[torch.as_tensor(nearest, device=values.device)]
