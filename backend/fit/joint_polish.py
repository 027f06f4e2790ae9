"""Joint second-order polish of the mesh and the refined cameras (issue 11, part 1).

The first-order fit (Adam on the vertices and on the camera corrections together) stalls
in a narrow valley where the mesh bends to explain cameras a few tenths of a pixel off.
After it, with the topology fixed, a few Levenberg-Marquardt steps move both together.

Unknowns x = (vertex displacements d (V, 3), changes c (N, 6) of the cameras' raw
parameters, `CameraRefinement`), both in pixels (d over the pixel size at the object, c
times the focal length), so one finite-difference step suits both. The objective is

    E(x) = 1/2 [ |r|^2 / (N A) + smoothness * mean_i |(L d)_i|^2
                 + camera_weight * mean_n |P (raw_n + c_n)|^2 ],

r (R,) the soft silhouettes of every training view at full resolution minus their
target alpha (N views of mean target area A pixels: the first term is about the fit's
1 - IoU), L the fit's uniform Laplacian and P the gauge projection. Each step solves

    (J^T J + H_reg + mu D) delta = -grad E

by preconditioned conjugate gradients, matrix-free: J^T u is a backward pass through the
render at x (its graph kept for the whole solve), J v a forward difference of the
render (the rasterizer's autograd functions have no forward mode). D is block-diagonal
(vertices, camera rotations, camera shifts), each block the mean diagonal of J^T J from
one random probe. The preconditioner smooths the vertex block through the large-steps
solve (I + lam L)^-1 with a large lam: the mesh's response to a camera change is smooth,
and truncated CG then finds it in a few products. A step is taken when E falls (mu then
shrinks), else mu grows and the step is solved again.

Two edge softnesses (squared pixels, `backend.render.renderer`): E is measured at
``polish_sigma``, J at JACOBIAN_SOFTENING times it. Sharper E fattens the silhouette less
(a soft edge biases the mesh inward and lowers the hard IoU); a softer J sees the
silhouette move over more of a pixel, so its steps stay descent directions of E. With
J four times softer than E, or E sharper than about 0.03 px^2, every step is refused.

Measured (docs/benchmarks.md, "Joint second-order polish"): at 128 px it removes a
further 3-43% of the cameras' silhouette error and raises the held-out IoU by 0.002 to
0.023 in 25-50 s on 2 CPU cores; it does not close the gap to exact cameras. Started
from the fit with exact cameras it keeps them (0.04 px); from the first-order fit it
descends into the nearer, worse minimum where the mesh explains part of the error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.options import FitOptions
from ..render.renderer import RenderSettings, render_silhouette
from .camera_refine import CameraRefinement
from .large_steps import SmoothSystem
from .loop import LoopResult
from .mesh_ops import laplacian
from .state import Snapshot
from .targets import TrainingTargets, ViewGroup

# Largest move of any unknown in a finite difference J v, pixels: far inside the edge's
# width (J's sigma 0.1 px^2: about 0.3 px), yet well above float32's resolution of the
# vertices; a forward difference there is 2-13% off the derivative on a box's corners
# (0.02 px: 10-25% off, and the polish's outcome barely changed).
DIFFERENCE_STEP_PX = 0.002
# J's edge softness over E's (module docstring).
JACOBIAN_SOFTENING = 2.0
# lam of the preconditioner's (I + lam L)^-1 on the vertex block (uniform Laplacian
# L = D - W); 2 to 1000 tried on the 96 px torus, larger moved the cameras further.
PRECONDITIONER_SMOOTHING = 1000.0
# mu's change after an accepted / a refused step; refusals in a row before giving up.
MU_DOWN, MU_UP, MAX_REFUSALS = 3.0, 4.0, 4


@dataclass
class PolishResult:
    """vertices: (V, 3) normalised frame; raw: (N, 6) the cameras' raw parameters;
    losses: E at the start and after each accepted step; refused: steps refused;
    seconds: wall time."""

    vertices: torch.Tensor
    raw: torch.Tensor
    losses: list[float]
    refused: int
    seconds: float


def _sigma(settings: RenderSettings, sigma: float) -> RenderSettings:
    return dataclasses.replace(settings, sigma=sigma)


class JointObjective:
    """E(x) and its Gauss-Newton pieces around a fitted mesh and refined cameras."""

    def __init__(self, vertices: torch.Tensor, faces: np.ndarray, groups: list[ViewGroup],
                 settings: RenderSettings, refinement: CameraRefinement,
                 options: FitOptions):
        """vertices: (V, 3) the fitted mesh (normalised frame, transform applied), float;
        faces: (F, 3) int64; groups: every refined view at full resolution; settings:
        the fit's render settings (their sigma is replaced)."""
        self.v0, self.raw0 = vertices.detach(), refinement.raw.detach().clone()
        # the views the tangency solve pinned stay where it put them
        self.free = torch.ones(len(self.raw0), 1, dtype=self.raw0.dtype, device=self.raw0.device)
        self.free[refinement.fixed] = 0.0
        self.faces = torch.as_tensor(faces, dtype=torch.long, device=vertices.device)
        self.groups, self.refinement = groups, refinement
        self.settings = _sigma(settings, options.polish_sigma)
        self.jacobian_settings = _sigma(settings, options.polish_sigma * JACOBIAN_SOFTENING)
        n_views = sum(len(g.indices) for g in groups)
        area = sum(float(g.alpha.sum()) for g in groups) / n_views
        self.data_scale = 1.0 / math.sqrt(n_views * max(area, 1.0))
        self.focal = float(torch.cat([g.cameras.intrinsics[:, 0, 0] for g in groups]).mean())
        self.pixel = float(refinement.distances.mean()) / self.focal
        self.n_vertex = 3 * len(vertices)
        self.lap = laplacian(faces, len(vertices), vertices.dtype, vertices.device)
        self.lap_t = self.lap.t().coalesce()
        self.smooth = options.polish_smoothness * self.pixel ** 2 / len(vertices)
        self.camera = options.camera_weight / len(self.raw0)
        self.system = SmoothSystem.build(faces, len(vertices), lam=PRECONDITIONER_SMOOTHING,
                                         device=vertices.device, dtype=vertices.dtype)

    @property
    def size(self) -> int:
        return self.n_vertex + self.raw0.numel()

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (size,) -> (vertices (V, 3), cameras' raw parameters (N, 6))."""
        d = x[:self.n_vertex].reshape(-1, 3) * self.pixel
        c = x[self.n_vertex:].reshape(-1, 6) / self.focal * self.free
        return self.v0 + d, self.raw0 + c

    def residual(self, x: torch.Tensor, for_jacobian: bool = False) -> torch.Tensor:
        """Weighted residuals (R,) of every view's pixels at E's edge softness (or J's);
        differentiable in x."""
        settings = self.jacobian_settings if for_jacobian else self.settings
        vertices, raw = self.unpack(x)
        out = []
        for group in self.groups:
            cams = self.refinement.apply(group.cameras, group.indices, raw)
            alpha = render_silhouette(vertices, self.faces, cams, settings)
            out.append((alpha - group.alpha).reshape(-1))
        return torch.cat(out) * self.data_scale

    def loss(self, x: torch.Tensor) -> float:
        """E(x)."""
        with torch.no_grad():
            r = self.residual(x)
            lap = torch.sparse.mm(self.lap, x[:self.n_vertex].reshape(-1, 3))
            raw = self.refinement.project(self.unpack(x)[1].reshape(-1))
        return 0.5 * float(r @ r + self.smooth * lap.square().sum() + self.camera * (raw @ raw))

    def regulariser_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H_reg v (size,): the smoothness and camera terms' constant Hessian times v."""
        d = v[:self.n_vertex].reshape(-1, 3)
        lap = torch.sparse.mm(self.lap_t, torch.sparse.mm(self.lap, d))
        c = self.refinement.project(v[self.n_vertex:]) / self.focal ** 2
        return torch.cat([self.smooth * lap.reshape(-1), self.camera * c])

    def regulariser_grad(self, x: torch.Tensor) -> torch.Tensor:
        """The regularisers' gradient (size,) at x."""
        out = self.regulariser_hvp(x)
        out[self.n_vertex:] += self.camera * self.refinement.project(
            self.raw0.reshape(-1)) / self.focal
        return out

    def jvp(self, x: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """J v (R,) by a forward difference from r, J's residual at x."""
        top = float(v.abs().max())
        if top == 0.0:
            return torch.zeros_like(r)
        h = DIFFERENCE_STEP_PX / top
        with torch.no_grad():
            return (self.residual(x + h * v, for_jacobian=True) - r) / h

    def damping(self, x: torch.Tensor, r: torch.Tensor, generator: torch.Generator):
        """D (size,): each block's mean diagonal of J^T J, E[|J z|^2] over a random sign
        vector z on the block, from one probe."""
        n = self.n_vertex
        cam = n + torch.arange(self.raw0.numel()).reshape(-1, 6)
        out = torch.zeros(self.size, dtype=x.dtype, device=x.device)
        for index in (torch.arange(n), cam[:, :3].reshape(-1), cam[:, 3:].reshape(-1)):
            z = torch.zeros_like(out)
            signs = torch.randint(0, 2, (len(index),), generator=generator) * 2.0 - 1.0
            z[index] = signs.to(device=z.device, dtype=z.dtype)
            out[index] = float(self.jvp(x, z, r).square().sum()) / len(index)
        return out.clamp_min(torch.finfo(out.dtype).tiny)

    def preconditioner(self, diag: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """v -> M^-1 v (size,): the vertex block through (I + lam L)^-1, every entry over
        its block's damping ``diag`` (size,); symmetric positive definite."""
        def apply(v: torch.Tensor) -> torch.Tensor:
            out = v.clone()
            out[:self.n_vertex] = self.system.solve(v[:self.n_vertex].reshape(-1, 3)).reshape(-1)
            return out / diag
        return apply


def conjugate_gradients(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                        precondition: Callable[[torch.Tensor], torch.Tensor],
                        iterations: int) -> torch.Tensor:
    """Solve A x = b (b (n,)) for A symmetric positive definite given as ``apply(v)``, from
    x = 0, preconditioned by ``precondition(v)`` = M^-1 v; at most ``iterations`` products
    (a truncated solve: the first iterations find the smooth, well-determined part)."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = precondition(r)
    p = z.clone()
    rz = float(r @ z)
    for _ in range(iterations):
        ap = apply(p)
        curvature = float(p @ ap)
        if curvature <= 0 or rz <= 0:
            break
        alpha = rz / curvature
        x += alpha * p
        r -= alpha * ap
        z = precondition(r)
        rz_new = float(r @ z)
        if rz_new <= 1e-12 * rz:
            break
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def polish(vertices: torch.Tensor, faces: np.ndarray, groups: list[ViewGroup],
           settings: RenderSettings, refinement: CameraRefinement, options: FitOptions,
           should_stop: Callable[[], bool] | None = None,
           on_step: Callable[[torch.Tensor, float], None] | None = None) -> PolishResult:
    """Up to ``options.polish_steps`` accepted Levenberg-Marquardt steps on the mesh and
    the cameras together (module docstring). vertices: (V, 3) normalised frame, float;
    faces: (F, 3) int64; groups: the refined views at full resolution. ``refinement`` is
    not changed: the caller takes ``raw`` from the result. Stops early when
    ``should_stop()`` or when MAX_REFUSALS + 1 tries in a row are refused.
    ``on_step(vertices (V, 3), objective)`` is called after each accepted step."""
    t0 = time.perf_counter()
    problem = JointObjective(vertices, faces, groups, settings, refinement, options)
    generator = torch.Generator().manual_seed(options.seed)
    x = torch.zeros(problem.size, dtype=vertices.dtype, device=vertices.device)
    losses, refused, mu = [problem.loss(x)], 0, options.polish_damping
    for _ in range(options.polish_steps):
        if should_stop is not None and should_stop():
            break
        step, loss, tries, mu = _lm_step(problem, x, losses[-1], mu, generator, options)
        refused += tries
        if step is None:
            break
        x = x + step
        losses.append(loss)
        if on_step is not None:
            on_step(problem.unpack(x)[0].detach(), loss)
    final_vertices, raw = problem.unpack(x)
    return PolishResult(final_vertices.detach(), raw.detach(), losses, refused,
                        time.perf_counter() - t0)


def _lm_step(problem: JointObjective, x: torch.Tensor, loss: float, mu: float,
             generator: torch.Generator, options: FitOptions):
    """One Levenberg-Marquardt step from x (size,) with E(x) = ``loss``: (the step or None
    when every try was refused, E after it, tries refused, the next mu)."""
    x_graph = x.clone().requires_grad_(True)
    r_graph = problem.residual(x_graph, for_jacobian=True)
    r_jacobian = r_graph.detach()
    with torch.no_grad():
        r = problem.residual(x)

    def jtu(u: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(r_graph, x_graph, u, retain_graph=True)[0]

    # J at the softer sigma, the residual at E's: a descent direction of E (docstring).
    grad = jtu(r) + problem.regulariser_grad(x)
    diag = problem.damping(x, r_jacobian, generator)
    for tries in range(MAX_REFUSALS + 1):
        def normal(v: torch.Tensor, mu: float = mu) -> torch.Tensor:
            return jtu(problem.jvp(x, v, r_jacobian)) + problem.regulariser_hvp(v) + mu * diag * v

        step = conjugate_gradients(normal, -grad, problem.preconditioner((1.0 + mu) * diag),
                                   options.polish_cg_iterations)
        # The preconditioner mixes in gauge directions, which change no image: drop them.
        step[problem.n_vertex:] = problem.refinement.project(step[problem.n_vertex:])
        new = problem.loss(x + step)
        if new < loss:
            return step, new, tries, mu / MU_DOWN
        mu *= MU_UP
    return None, loss, MAX_REFUSALS + 1, mu


def polish_fit(run: LoopResult, refinement: CameraRefinement, targets: TrainingTargets,
               settings: RenderSettings, options: FitOptions,
               should_stop: Callable[[], bool] | None = None,
               on_step: Callable[[Snapshot, float], None] | None = None,
               ) -> tuple[LoopResult, str]:
    """A finished loop's mesh and cameras polished together (`polish`) on the training
    views at the finest level: (the loop's result with the polished mesh and the
    polish's time added, a message for the result). ``refinement.raw`` is updated;
    ``on_step(snapshot, objective)`` follows the mesh after each accepted step."""
    last = run.last_good

    def step_taken(vertices: torch.Tensor, objective: float) -> None:
        if on_step is not None:
            on_step(Snapshot(vertices, last.faces, last.colors), objective)

    result = polish(last.vertices, last.faces, targets.at(len(targets.levels) - 1), settings,
                    refinement, options, should_stop, step_taken)
    with torch.no_grad():
        refinement.raw.copy_(result.raw)
    message = (f"polished the mesh and the cameras together: {len(result.losses) - 1} "
               f"Gauss-Newton steps ({result.refused} refused), objective "
               f"{result.losses[0]:.4g} -> {result.losses[-1]:.4g}, {result.seconds:.1f} s")
    if should_stop is not None and should_stop():
        message += " (cancelled: the steps taken are kept)"
    polished = Snapshot(result.vertices, last.faces, last.colors)
    run = dataclasses.replace(run, last_good=polished, seconds=run.seconds + result.seconds)
    return run, message
