"""Large-steps parameterisation (Nicolet, Jacobson, Jakob 2021): optimise u = (I + lambda L) v.

The optimiser moves the "differential" coordinates u; the vertices v are recovered with a
sparse Cholesky solve whose factor is computed once per topology (`cholespy`, on the CPU or
on a CUDA device, wherever the tensors live). A gradient step on u is a smooth, global move
of v, so large steps do not tangle the mesh. `AdamUniform` rescales all entries by one
number (from the largest second moment), which keeps the step's smoothness intact.

Usage, a few lines in a fitting loop::

    system = SmoothSystem.build(faces, len(vertices), lam=19.0)
    u = system.to_differential(vertices).requires_grad_()
    opt = AdamUniform([u], lr=3e-2)
    ...  v = system.from_differential(u); loss(v).backward(); opt.step()

After a topology change build a new system (one symbolic analysis and factorisation,
milliseconds for 10k vertices) and convert the new vertices with `to_differential`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cholespy
import numpy as np
import torch

from .mesh_ops import edges

LAPLACIANS = ("uniform", "cotangent")


def laplacian_entries(faces, n_vertices: int, kind: str = "uniform", vertices=None):
    """The symmetric positive semi-definite Laplacian L = D - W as COO entries.

    faces: (F, 3) integer array or tensor. kind "uniform": W_ij = 1 for every edge;
    "cotangent": W_ij = (cot alpha + cot beta) / 2, the angles opposite the edge, clamped
    at 0 so that L stays semi-definite on obtuse triangles (`vertices` (V, 3) needed).
    Returns (rows, cols, values): int64, int64, float64 numpy arrays, each entry once.
    """
    faces = np.asarray(faces.cpu() if torch.is_tensor(faces) else faces, dtype=np.int64)
    if kind == "uniform":
        e = edges(faces)
        w = np.ones(len(e))
    elif kind == "cotangent":
        if vertices is None:
            raise ValueError("the cotangent Laplacian needs the vertices: pass vertices=(V, 3)")
        e, w = _cotangent_weights(faces, vertices)
    else:
        raise ValueError(f"unknown Laplacian {kind!r}: choose one of {LAPLACIANS}")
    diagonal = np.bincount(e.reshape(-1), weights=np.repeat(w, 2), minlength=n_vertices)
    rows = np.concatenate([e[:, 0], e[:, 1], np.arange(n_vertices)])
    cols = np.concatenate([e[:, 1], e[:, 0], np.arange(n_vertices)])
    values = np.concatenate([-w, -w, diagonal])
    return rows, cols, values


def _cotangent_weights(faces: np.ndarray, vertices) -> tuple[np.ndarray, np.ndarray]:
    """Unique edges (E, 2) and their clamped cotangent weights (E,) float64."""
    v = np.asarray(vertices.detach().cpu() if torch.is_tensor(vertices) else vertices,
                   dtype=np.float64)
    tri = v[faces]  # (F, 3 corners, 3)
    cots = []
    for k in range(3):  # angle at corner k is opposite the edge (k+1, k+2)
        a = tri[:, (k + 1) % 3] - tri[:, k]
        b = tri[:, (k + 2) % 3] - tri[:, k]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        cots.append(np.einsum("ij,ij->i", a, b) / np.maximum(cross, 1e-12))
    opposite = np.concatenate([faces[:, [1, 2]], faces[:, [2, 0]], faces[:, [0, 1]]])
    key = np.sort(opposite, axis=1)
    e, inverse = np.unique(key, axis=0, return_inverse=True)
    w = np.bincount(inverse.reshape(-1), weights=0.5 * np.concatenate(cots), minlength=len(e))
    return e, np.maximum(w, 0.0)


class _Solve(torch.autograd.Function):
    """v = A^-1 u with A symmetric: the backward pass is the same solve."""

    @staticmethod
    def forward(ctx, u, system):
        ctx.system = system
        return system.solve(u).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_v):
        return ctx.system.solve(grad_v).to(grad_v.dtype), None


@dataclass
class SmoothSystem:
    """A factorised (I + lam L) for one mesh topology, on one device and dtype.

    matrix: the sparse (V, V) torch tensor (for `to_differential`); solver: its Cholesky
    factor (cholespy; float32 or float64 like `dtype`).
    """

    matrix: torch.Tensor
    solver: object
    lam: float

    @staticmethod
    def build(faces, n_vertices: int, lam: float = 19.0, kind: str = "uniform", vertices=None,
              device="cpu", dtype=torch.float32) -> SmoothSystem:
        """Assemble and factorise I + lam L (see `laplacian_entries` for `kind`).

        lam > 0 sets the smoothing: larger moves v more smoothly per step on u.
        The factorisation runs on `device` (CPU, or CUDA through cholespy's GPU solver).
        """
        if not (np.isfinite(lam) and lam > 0):
            raise ValueError(f"lambda must be a positive number, got {lam}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the solve works in float32 or float64, got {dtype}")
        rows, cols, values = laplacian_entries(faces, n_vertices, kind, vertices)
        values = lam * values
        values[len(values) - n_vertices:] += 1.0  # the identity, on the diagonal entries
        index = torch.tensor(np.stack([rows, cols]), device=device)
        vals = torch.tensor(values, dtype=dtype, device=device)
        matrix = torch.sparse_coo_tensor(index, vals, (n_vertices, n_vertices),
                                         check_invariants=True).coalesce()
        solver_class = (cholespy.CholeskySolverF if dtype == torch.float32
                        else cholespy.CholeskySolverD)
        ii = index[0].to(torch.int32).contiguous()
        jj = index[1].to(torch.int32).contiguous()
        solver = solver_class(n_vertices, ii, jj, vals.contiguous(), cholespy.MatrixType.COO)
        return SmoothSystem(matrix=matrix, solver=solver, lam=float(lam))

    @property
    def n_vertices(self) -> int:
        return self.matrix.shape[0]

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """x = (I + lam L)^-1 b for b (V,) or (V, C) of the system's dtype and device."""
        if b.shape[0] != self.n_vertices:
            raise ValueError(
                f"the system has {self.n_vertices} vertices but the right-hand side has "
                f"{b.shape[0]} rows: rebuild the system after a topology change"
            )
        b = b.detach().to(self.matrix.dtype).contiguous()
        x = torch.empty_like(b)
        self.solver.solve(b, x)
        return x

    def to_differential(self, vertices: torch.Tensor) -> torch.Tensor:
        """u = (I + lam L) v: vertices (V, 3) -> differential coordinates (V, 3), same dtype."""
        out = torch.sparse.mm(self.matrix, vertices.to(self.matrix.dtype))
        return out.to(vertices.dtype)

    def from_differential(self, u: torch.Tensor) -> torch.Tensor:
        """v = (I + lam L)^-1 u, differentiable in u: (V, 3) -> (V, 3)."""
        return _Solve.apply(u, self)


class AdamUniform(torch.optim.Optimizer):
    """Adam whose step divides by ONE number: the square root of the largest second moment.

    Per-entry scaling (plain Adam) would undo the smoothing of the large-steps
    parameterisation; a uniform scale keeps the step's direction. State per parameter:
    "step" (int), "exp_avg" and "exp_avg_sq" (like the parameter), as in torch's Adam, so
    code that carries optimiser state across topology changes treats both alike.
    """

    def __init__(self, params, lr: float = 1e-2, betas=(0.9, 0.999), eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                state["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat = state["exp_avg"] / (1 - b1**t)
                scale = torch.sqrt(state["exp_avg_sq"].max() / (1 - b2**t)) + group["eps"]
                p.sub_(group["lr"] * m_hat / scale)
        return loss
