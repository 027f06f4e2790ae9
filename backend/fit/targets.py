"""The target images on the optimiser's device: views batched by image size, at a
resolution level, with their cameras in the fit's normalised frame."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..render.renderer import Cameras
from .inputs import Prepared


@dataclass(frozen=True)
class Frame:
    """The normalised frame the fit works in: world = normalised * scale + center.

    The initial mesh's bounding box is centred and its longest side two units, so
    learning rates and loss weights do not depend on the scene's scale.
    """

    center: np.ndarray  # (3,) float64
    scale: float

    @staticmethod
    def around(vertices: np.ndarray) -> Frame:
        """The frame of a mesh's bounding box; vertices (V, 3) float64."""
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        scale = 0.5 * float((hi - lo).max())
        return Frame(0.5 * (lo + hi), scale if scale > 0 else 1.0)

    def normalise(self, vertices: np.ndarray) -> np.ndarray:
        """World (V, 3) float64 -> normalised (V, 3) float64."""
        return (vertices - self.center) / self.scale

    def to_world(self, vertices: torch.Tensor) -> np.ndarray:
        """Normalised (V, 3) tensor -> world (V, 3) float32 numpy."""
        return (vertices.detach().cpu().double().numpy() * self.scale
                + self.center).astype(np.float32)

    def to_world_matrix(self) -> np.ndarray:
        """(4, 4) float64 taking normalised points to world points."""
        to_world = np.eye(4)
        to_world[:3, :3] *= self.scale
        to_world[:3, 3] = self.center
        return to_world


@dataclass
class ViewGroup:
    """Views of one image size at one resolution level, as tensors on the device."""

    indices: list[int]  # view indices (input order)
    cameras: Cameras  # normalised-frame cameras at this level
    alpha: torch.Tensor  # (B, h, w)
    rgb: torch.Tensor | None  # (B, h, w, 3)


def view_groups(prep: Prepared, indices: list[int], scale: float, frame: Frame,
                with_rgb: bool, device, dtype=torch.float32,
                covering_alpha: bool = False) -> list[ViewGroup]:
    """The views ``indices`` grouped by image size (groups in order of each size's first
    view), images area-downsampled by ``scale`` (0, 1] and intrinsics scaled to match.

    covering_alpha: downsample the alpha by its maximum instead (`_resized`), as the
    coarse levels of the fit do."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        cam = prep.views[i].camera
        by_size.setdefault((cam.width, cam.height), []).append(i)
    to_world = frame.to_world_matrix()
    out = []
    for (width, height), idx in by_size.items():
        w = max(1, round(width * scale))
        h = max(1, round(height * scale))
        mats = []
        for i in idx:
            cam = prep.views[i].camera.resized(w, h)
            mats.append(dataclasses.replace(cam, world_to_camera=cam.world_to_camera @ to_world))
        cams = Cameras.from_matrices(mats, dtype=dtype, device=device)
        images = torch.stack([_resized(prep.views[i].image, w, h, with_rgb, dtype, device,
                                       covering_alpha) for i in idx])
        out.append(ViewGroup(idx, cams, images[..., 3].contiguous() if with_rgb else images,
                             images[..., :3].contiguous() if with_rgb else None))
    return out


def _resized(image: np.ndarray, w: int, h: int, with_rgb: bool, dtype, device,
             covering_alpha: bool = False) -> torch.Tensor:
    """One view's (H, W, 4) image area-downsampled to (h, w, 4), or only its alpha (h, w)
    without ``with_rgb``; one view at a time, so large image sets never sit in memory
    twice at full size.

    covering_alpha: the alpha is downsampled by its maximum over each pixel's window, so a
    part thinner than a pixel stays fully opaque. Area-averaged, a table leg a quarter of
    a coarse pixel wide has alpha 0.25, which a zero-width sliver of triangles matches
    (a soft edge has D = 0.5 on the edge itself): thin parts then collapse to wires at the
    coarse levels and break when the finer levels inflate them again. Covering targets
    keep them a pixel thick; the finer levels take the excess back (docs/design.md).
    """
    image = np.asarray(image)
    channels = image if with_rgb else image[..., 3:]
    x = torch.as_tensor(np.ascontiguousarray(channels, dtype=np.float32)).to(device, dtype)
    if x.shape[:2] != (h, w):
        chw = x.permute(2, 0, 1)[None]
        resized = torch.nn.functional.interpolate(chw, size=(h, w), mode="area")
        if covering_alpha:
            alpha = torch.nn.functional.adaptive_max_pool2d(chw[:, -1:], (h, w))
            resized = torch.cat([resized[:, :-1], alpha], dim=1)
        x = resized[0].permute(1, 2, 0)
    return x if with_rgb else x[..., 0].contiguous()


def batches(groups: list[ViewGroup], chosen: list[int]) -> list[tuple[ViewGroup, list[int]]]:
    """The chosen views (view indices) as (group, rows in that group) batches; groups in
    the order their first view was chosen, rows in the order chosen."""
    rows_by_group: dict[int, list[int]] = {}
    for i in chosen:
        k = next(k for k, group in enumerate(groups) if i in group.indices)
        rows_by_group.setdefault(k, []).append(groups[k].indices.index(i))
    return [(groups[k], rows) for k, rows in rows_by_group.items()]


class TrainingTargets:
    """The training views' groups at every resolution level, each built on first use."""

    def __init__(self, prep: Prepared, levels: list[float], frame: Frame, with_rgb: bool,
                 device, dtype=torch.float32):
        self.prep, self.levels, self.frame = prep, levels, frame
        self.with_rgb, self.device, self.dtype = with_rgb, device, dtype
        self._groups: dict[int, list[ViewGroup]] = {}

    def at(self, level: int) -> list[ViewGroup]:
        """The groups at ``level``, an index into the schedule's resolution levels."""
        if level not in self._groups:
            coarse = level < len(self.levels) - 1
            self._groups[level] = view_groups(self.prep, self.prep.train_idx,
                                              self.levels[level], self.frame, self.with_rgb,
                                              self.device, self.dtype, covering_alpha=coarse)
        return self._groups[level]
