"""What the optimiser moves: the mesh's vertices (an initial shape plus per-vertex
offsets), a global translation and log-scale, and optionally per-vertex colours, all in
the fit's normalised frame (`backend.fit.targets.Frame`).

The topology (vertex and face count) may change between iterations: `MeshState.set_mesh`
takes the current shape as the new base, rebuilds the connectivity the regularisers use
and restarts the optimiser; the global transform carries over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.options import FitOptions
from .mesh_ops import EdgeAdjacency, edge_adjacency, edges, laplacian, subdivide


@dataclass
class Snapshot:
    """A copy of the state between iterations, world transform applied (normalised frame).

    vertices: (V, 3) float tensor; faces: (F, 3) int64 numpy; colors: (V, 3) or None.
    """

    vertices: torch.Tensor
    faces: np.ndarray
    colors: torch.Tensor | None


class MeshState:
    """The optimised parameters, the connectivity of the current topology and the Adam
    optimiser over them."""

    def __init__(self, base: torch.Tensor, faces: np.ndarray, options: FitOptions,
                 colors: torch.Tensor | None):
        """base: (V, 3) float initial vertices; faces: (F, 3) int64; colors: (V, 3) in
        [0, 1] to fit colours from, or None."""
        self.options = options
        device, dtype = base.device, base.dtype
        self.translation = torch.zeros(3, dtype=dtype, device=device, requires_grad=True)
        self.log_scale = torch.zeros(1, dtype=dtype, device=device, requires_grad=True)
        logits = None if colors is None else torch.logit(colors.clamp(0.02, 0.98))
        self.set_mesh(base, faces, logits)

    def set_mesh(self, shape: torch.Tensor, faces: np.ndarray,
                 color_logits: torch.Tensor | None) -> None:
        """Start over from a new mesh (the one place the topology changes).

        shape: (V, 3) float, normalised frame before the global transform; faces: (F, 3)
        int64 numpy; color_logits: (V, 3) when fitting colours, else None. The offsets
        restart at zero and the optimiser (its moments too) is rebuilt.
        """
        device, dtype = shape.device, shape.dtype
        self.base = shape.detach()
        self.faces_np = faces
        self.faces = torch.as_tensor(faces, dtype=torch.long, device=device)
        self.offsets = torch.zeros_like(self.base, requires_grad=True)
        self.color_logits = (None if color_logits is None
                             else color_logits.detach().clone().requires_grad_(True))
        self.laplacian = laplacian(faces, len(shape), dtype=dtype, device=device)
        adjacency = edge_adjacency(faces)
        self.adjacency = EdgeAdjacency(*(torch.as_tensor(x, device=device) for x in (
            adjacency.edge, adjacency.opposite, adjacency.face_pair)))
        self.edges = torch.as_tensor(edges(faces), device=device)
        lengths = (self.base[self.edges[:, 0]] - self.base[self.edges[:, 1]]).norm(dim=1)
        self.edge_target = float(lengths.mean()) if len(lengths) else 1.0
        self._build_optimizer()

    def _build_optimizer(self) -> None:
        options = self.options
        groups = [{"params": [self.offsets], "lr": options.learning_rate}]
        if options.fit_transform:
            groups.append({"params": [self.translation, self.log_scale],
                           "lr": options.learning_rate})
        if self.color_logits is not None:
            groups.append({"params": [self.color_logits], "lr": options.color_learning_rate})
        self.optimizer = torch.optim.Adam(groups, betas=(0.5, 0.99))
        self.base_lrs = [g["lr"] for g in groups]

    def set_lr_factor(self, factor: float) -> None:
        """Every learning rate at ``factor`` times its start."""
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * factor

    def shape(self) -> torch.Tensor:
        """Normalised-frame vertices (V, 3) before the global transform."""
        return self.base + self.offsets

    def vertices(self) -> torch.Tensor:
        """Normalised-frame vertices (V, 3), differentiable."""
        return self.shape() * torch.exp(self.log_scale) + self.translation

    def colors(self) -> torch.Tensor | None:
        """Per-vertex RGB (V, 3) in (0, 1), differentiable; None when not fitting colours."""
        return None if self.color_logits is None else torch.sigmoid(self.color_logits)

    def params(self) -> list[torch.Tensor]:
        """Every parameter tensor, optimised or not."""
        out = [self.offsets, self.translation, self.log_scale]
        return out + ([self.color_logits] if self.color_logits is not None else [])

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
