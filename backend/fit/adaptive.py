"""Adaptive topology during the fit (``FitOptions.topology == "adapt"``).

Every ``remesh_every`` iterations the mesh is remeshed (`backend.fit.remesh`: collapses,
splits, flips, then tangential relaxation) toward per-vertex edge lengths of
``edge_pixels`` pixels in the training views at the iteration's resolution level, so
the coarse levels keep a coarse mesh and the finer levels add triangles where the
images resolve detail. A face budget bounds the edge lengths from below and stops
splits. The optimisers' per-vertex moments follow the vertices (`MeshState.set_mesh`),
and the mesh stays a closed, oriented manifold at every step (`remesh` checks it).

The last iterations (after ``REMESH_UNTIL`` of them) keep the topology so the final
mesh settles on the silhouettes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.options import FitError, FitOptions
from .inputs import InitialMesh, Prepared, silhouettes
from .mesh_ops import check_mesh, edges, face_areas
from .remesh import edge_length_for_faces, pixel_target_lengths, remesh, tangential_relaxation
from .schedule import Step
from .state import MeshState
from .targets import Frame
from .visual_hull import visual_hull

REMESH_UNTIL = 0.8  # fraction of the iterations after which the topology stays fixed
RELAXATION = 0.5  # tangential relaxation weight after each remesh
MIN_BUDGET = 500  # faces: the automatic budget never goes below this
SURFACE_PER_SILHOUETTE = 12.0  # a convex body's area is 4x its mean projection (Cauchy); 3x more
COARSE_EDGE_FACTOR = 4.0  # kept edges this many times edge_pixels are "too coarse"
GENUS_HULL_FACES = 2000  # the hull carved to count the silhouettes' through-holes


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


def topology_advice(prep: Prepared, start: InitialMesh, world: np.ndarray, faces: np.ndarray,
                    options: FitOptions, mesh_given: bool) -> list[str]:
    """Messages about the start's topology: a genus the silhouettes contradict (their
    visual hull has more through-holes than a given mesh or the sphere start) and, for
    a given mesh kept as it is, triangles too large for the images.

    world: (V, 3) the fitted vertices; faces: (F, 3); mesh_given: the caller gave the
    start (else it was made from the silhouettes, `options.init`).
    """
    out = []
    if mesh_given or options.init == "sphere":  # the hull start has the hull's genus
        hull_genus, start_genus = _hull_genus(prep), genus(start.faces, len(start.vertices))
        if hull_genus > start_genus:
            out.append(f"the silhouettes show {hull_genus} through-hole(s) but the initial mesh "
                       f"has {start_genus}: a fit cannot open holes; start from the Visual "
                       "Hull (no initial mesh, init='hull'), which keeps them")
    if mesh_given and options.topology == "keep":
        pixels = float(np.median(pixel_edge_lengths(prep, world, faces)))
        if pixels > COARSE_EDGE_FACTOR * options.edge_pixels:
            out.append(f"the mesh is too coarse for the images (median edge {pixels:.0f} px): "
                       "Adapt (topology='adapt', no Keep Topology) adds triangles where the "
                       "images show detail")
    return out


def _hull_genus(prep: Prepared) -> int:
    """Genus of a coarse visual hull of the training silhouettes (0 if it cannot be carved)."""
    try:
        hull = visual_hull(silhouettes(prep), target_faces=GENUS_HULL_FACES)
    except ValueError:
        return 0
    return genus(hull.faces, len(hull.vertices))


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
    remeshes: int = 0

    @staticmethod
    def create(prep: Prepared, frame: Frame, levels: list[float],
               options: FitOptions) -> AdaptiveTopology | None:
        """The remesher of an adaptive fit, or None when the topology is kept."""
        if options.topology != "adapt":
            return None
        return AdaptiveTopology(prep, frame, levels, options, face_budget(prep, options))

    def due(self, step: Step) -> bool:
        last = REMESH_UNTIL * self.options.iterations
        return step.iteration % self.options.remesh_every == 0 and step.iteration < last

    def target_lengths(self, state: MeshState, level: int) -> torch.Tensor:
        """Per-vertex edge targets (V,) in the state's shape frame (before the global
        transform): ``edge_pixels`` in the finest view at ``level``, no shorter than the
        face budget allows."""
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
        area = float(face_areas(shape.cpu().double().numpy(), state.faces_np).sum())
        floor = edge_length_for_faces(area, self.budget)
        return torch.as_tensor(np.maximum(lengths, floor), dtype=shape.dtype,
                               device=shape.device)

    def remesh(self, state: MeshState, step: Step) -> bool:
        """Remesh ``state`` in place toward `target_lengths`; True (the faces changed)."""
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
