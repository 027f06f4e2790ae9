"""How well a mesh matches the views: hard IoU of full-resolution silhouettes, and what
the initial mesh's IoU says about the setup."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..render.renderer import RenderSettings, render_silhouette
from . import losses
from .inputs import Prepared
from .targets import ViewGroup

# Edge softness (px^2) of the renders that measure hard IoU: alpha > 0.5 is then
# point-sampled coverage of the pixel centre.
EVAL_SIGMA = 1e-3
EVAL_BATCH = 8


def evaluate(vertices: torch.Tensor, faces: torch.Tensor, groups: list[ViewGroup],
             settings: RenderSettings) -> dict[int, float]:
    """Hard IoU (alpha > 0.5 vs target alpha > 0.5) of every view in ``groups``, by view index.

    vertices: (V, 3) normalised frame; faces: (F, 3) int64 tensor on the same device.
    """
    settings = dataclasses.replace(settings, sigma=EVAL_SIGMA)
    out = {}
    with torch.no_grad():
        for group in groups:
            for start in range(0, len(group.indices), EVAL_BATCH):
                rows = slice(start, start + EVAL_BATCH)
                alpha = render_silhouette(vertices, faces, group.cameras.select(rows), settings)
                ious = losses.hard_iou(alpha, group.alpha[rows]).tolist()
                for i, iou in zip(group.indices[rows], ious, strict=True):
                    out[i] = float(iou)
    return out


def coverage_warnings(prep: Prepared, iou: dict[int, float], mesh_given: bool,
                      aligned: bool) -> list[str]:
    """What the initial mesh's IoU per view index says about the cameras and the mesh."""
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
