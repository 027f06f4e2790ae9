"""What the optimiser moves: the mesh's vertices (an initial shape plus per-vertex
offsets), a global translation and log-scale, and optionally per-vertex colours, all in
the fit's normalised frame (`backend.fit.targets.Frame`).

The topology (vertex and face count) may change between iterations: `MeshState.set_mesh`
takes the current shape as the new base, rebuilds the connectivity the regularisers use
(and the large-steps factorisation) and restarts the optimisers or carries their
per-vertex moments over; the global transform carries over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.options import FitOptions
from . import losses
from .large_steps import AdamUniform, SmoothSystem
from .mesh_ops import EdgeAdjacency, edge_adjacency, edges, laplacian, subdivide
from .remesh import replace_parameter, vertex_state

# AdamUniform's betas: short memories while remeshing (a coarse mesh's larger second
# moments, carried across a split, would stall the steps; docs/design.md), the usual
# ones on a fixed topology.
ADAPT_BETAS = (0.8, 0.8)
KEEP_BETAS = (0.9, 0.999)


@dataclass
class Snapshot:
    """A copy of the state between iterations, world transform applied (normalised frame).

    vertices: (V, 3) float tensor; faces: (F, 3) int64 numpy; colors: (V, 3) or None.
    """

    vertices: torch.Tensor
    faces: np.ndarray
    colors: torch.Tensor | None


class MeshState:
    """The optimised parameters, the connectivity of the current topology and the
    optimisers over them.

    The shape is either ``base + offsets`` (Adam, held by the Laplacian term) or, with
    ``options.large_steps``, ``(I + smoothing L)^-1 u`` with ``u`` moved by `AdamUniform`
    (`backend.fit.large_steps`). ``shape_param`` is whichever of ``offsets`` / ``u`` is
    optimised; ``optimizer`` holds everything else (transform, colours).
    """

    def __init__(self, base: torch.Tensor, faces: np.ndarray, options: FitOptions,
                 colors: torch.Tensor | None):
        """base: (V, 3) float initial vertices; faces: (F, 3) int64; colors: (V, 3) in
        [0, 1] to fit colours from, or None."""
        self.options = options
        self.lr_scale = 1.0  # `scale_learning_rates`
        device, dtype = base.device, base.dtype
        self.translation = torch.zeros(3, dtype=dtype, device=device, requires_grad=True)
        self.log_scale = torch.zeros(1, dtype=dtype, device=device, requires_grad=True)
        logits = None if colors is None else torch.logit(colors.clamp(0.02, 0.98))
        self.set_mesh(base, faces, logits)

    def set_mesh(self, shape: torch.Tensor, faces: np.ndarray,
                 color_logits: torch.Tensor | None, moments: dict | None = None) -> None:
        """Start over from a new mesh (the one place the topology changes).

        shape: (V, 3) float, normalised frame before the global transform; faces: (F, 3)
        int64 numpy; color_logits: (V, 3) when fitting colours, else None. moments: the
        optimiser's per-vertex state for the new vertices ({"shape": {name: (V, 3)},
        "color": {...}}, see `vertex_moments`), carried into the new parameters; None
        rebuilds the optimisers from scratch. The global transform carries over.
        """
        old_shape, old_colors = getattr(self, "shape_param", None), getattr(
            self, "color_logits", None)
        device, dtype = shape.device, shape.dtype
        # Only the vertices moved (untangling): what the faces determine stays, the
        # large-steps factorisation included.
        same_topology = (old_shape is not None and len(old_shape) == len(shape)
                         and np.array_equal(self.faces_np, faces))
        if not same_topology:
            self.faces_np = faces
            self.faces = torch.as_tensor(faces, dtype=torch.long, device=device)
            self.laplacian = laplacian(faces, len(shape), dtype=dtype, device=device)
            adjacency = edge_adjacency(faces)
            self.adjacency = EdgeAdjacency(*(torch.as_tensor(x, device=device) for x in (
                adjacency.edge, adjacency.opposite, adjacency.face_pair)))
            self.edges = torch.as_tensor(edges(faces), device=device)
        self._set_shape(shape.detach(), refactor=not same_topology)
        self.color_logits = (None if color_logits is None
                             else color_logits.detach().clone().requires_grad_(True))
        lengths = (shape[self.edges[:, 0]] - shape[self.edges[:, 1]]).norm(dim=1)
        self.edge_target = float(lengths.mean()) if len(lengths) else 1.0
        if moments is None:
            self._build_optimizer()
            return
        replace_parameter(self.shape_optimizer, old_shape, self.shape_param, moments["shape"])
        if self.color_logits is not None:
            replace_parameter(self.optimizer, old_colors, self.color_logits, moments["color"])

    def _set_shape(self, shape: torch.Tensor, refactor: bool = True) -> None:
        """The shape parameter at ``shape`` (V, 3): zero offsets from it, or its
        differential coordinates in the large-steps system (factorised afresh when
        ``refactor``, else the current one: same faces, same system)."""
        if self.options.large_steps:
            self.base = None
            if refactor:
                self.system = SmoothSystem.build(self.faces_np, len(shape),
                                                 lam=self.options.smoothing,
                                                 device=shape.device, dtype=shape.dtype)
            self.shape_param = self.system.to_differential(shape).requires_grad_(True)
        else:
            self.base, self.system = shape, None
            self.shape_param = torch.zeros_like(shape, requires_grad=True)

    def _build_optimizer(self) -> None:
        options = self.options
        lr = options.learning_rate
        if options.large_steps:
            betas = ADAPT_BETAS if options.topology == "adapt" else KEEP_BETAS
            self.shape_optimizer = AdamUniform([self.shape_param], lr=options.large_steps_lr,
                                               betas=betas)
        else:
            self.shape_optimizer = torch.optim.Adam([self.shape_param], lr=lr, betas=(0.5, 0.99))
        groups = []
        if options.fit_transform:
            groups.append({"params": [self.translation, self.log_scale], "lr": lr})
        if self.color_logits is not None:
            groups.append({"params": [self.color_logits], "lr": options.color_learning_rate})
        self.optimizer = torch.optim.Adam(groups or [{"params": [], "lr": lr}],
                                          betas=(0.5, 0.99))
        self._base_lrs = [(g, g["lr"] * self.lr_scale)
                          for opt in self.optimizers() for g in opt.param_groups]

    def scale_learning_rates(self, scale: float) -> None:
        """Every learning rate at ``scale`` times the options' from now on, optimisers
        rebuilt later included (`start_lr_scale`)."""
        self._base_lrs = [(g, lr / self.lr_scale * scale) for g, lr in self._base_lrs]
        self.lr_scale = scale
        for group, base_lr in self._base_lrs:
            group["lr"] = base_lr

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.shape_optimizer, self.optimizer]

    def zero_grad(self) -> None:
        for opt in self.optimizers():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers():
            opt.step()

    def set_lr_factor(self, factor: float) -> None:
        """Every learning rate at ``factor`` times its start."""
        for group, base_lr in self._base_lrs:
            group["lr"] = base_lr * factor

    def shape(self) -> torch.Tensor:
        """Normalised-frame vertices (V, 3) before the global transform, differentiable."""
        if self.system is not None:
            return self.system.from_differential(self.shape_param)
        return self.base + self.shape_param

    def laplacian_loss(self) -> torch.Tensor:
        """The Laplacian of the offsets from the base shape; zero with large steps, whose
        parameterisation smooths the moves instead."""
        if self.system is not None:
            return self.shape_param.new_zeros(())
        return losses.laplacian_loss(self.shape_param, self.laplacian)

    def vertices(self) -> torch.Tensor:
        """Normalised-frame vertices (V, 3), differentiable."""
        return self.shape() * torch.exp(self.log_scale) + self.translation

    def colors(self) -> torch.Tensor | None:
        """Per-vertex RGB (V, 3) in (0, 1), differentiable; None when not fitting colours."""
        return None if self.color_logits is None else torch.sigmoid(self.color_logits)

    def params(self) -> list[torch.Tensor]:
        """Every parameter tensor, optimised or not."""
        out = [self.shape_param, self.translation, self.log_scale]
        return out + ([self.color_logits] if self.color_logits is not None else [])

    def vertex_moments(self) -> dict[str, dict[str, torch.Tensor]]:
        """The optimisers' per-vertex state: {"shape": {name: (V, 3)}, "color": {...}}."""
        out = {"shape": vertex_state(self.shape_optimizer, self.shape_param)}
        if self.color_logits is not None:
            out["color"] = vertex_state(self.optimizer, self.color_logits)
        return out

    def snapshot(self) -> Snapshot:
        with torch.no_grad():
            colors = self.colors()
            return Snapshot(self.vertices().detach().clone(), self.faces_np,
                            None if colors is None else colors.detach().clone())

    def subdivide(self) -> None:
        """Split every face in four (midpoint subdivision), colours interpolated."""
        with torch.no_grad():
            if self.color_logits is None:
                shape, faces = subdivide(self.shape(), self.faces_np)
                logits = None
            else:
                shape, faces, (logits,) = subdivide(self.shape(), self.faces_np,
                                                    [self.color_logits])
        self.set_mesh(shape, faces, logits)
