"""Photos with a known silhouette: a coloured blob rendered by the project's own soft
rasterizer over a plain, dark, light or green backdrop with lighting falloff and noise.

For tests and benchmarks of the segmentation (no Blender, no Cycles): the rendered
alpha is the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.camera import CameraMatrices, blender_camera, orbit_cameras
from ..fit.mesh_ops import icosphere
from ..render.renderer import Cameras, render
from ..render.settings import Lighting, RenderSettings

BACKDROPS = {
    "plain": (0.45, 0.50, 0.60),
    "dark": (0.03, 0.03, 0.03),
    "light": (0.92, 0.92, 0.90),
    "green": (0.10, 0.65, 0.20),
}


@dataclass
class SyntheticView:
    """image: (H, W, 3) float32 in [0, 1]; alpha: (H, W) float32, the true silhouette."""

    name: str
    image: np.ndarray
    alpha: np.ndarray
    camera: CameraMatrices


def synthetic_object(spots: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lumpy blob about 1.6 units across: vertices (V, 3) float64, faces (F, 3) int64,
    colours (V, 3) float64 in warm tones. With `spots`, a few patches are coloured like
    the backdrop (0 here; `synthetic_views` paints them) to make holes for the keyer."""
    verts, faces = icosphere(3)
    x, y, z = verts.T
    radius = 0.8 * (1.0 + 0.18 * np.sin(3 * x + 1.0) * np.cos(2 * y) + 0.12 * np.sin(4 * z))
    verts = verts * radius[:, None] * np.array([1.0, 0.8, 1.1])
    colours = np.stack([0.75 + 0.15 * np.sin(5 * x), 0.45 + 0.12 * np.cos(4 * y),
                        0.25 + 0.1 * np.sin(3 * z)], axis=1)
    if spots:
        for centre in ([0.0, -1.0, 0.3], [0.7, -0.7, -0.2], [-0.7, -0.6, 0.0]):
            near = np.linalg.norm(verts / np.linalg.norm(verts, axis=1)[:, None]
                                  - np.asarray(centre) / np.linalg.norm(centre), axis=1) < 0.13
            colours[near] = -1.0  # marker: backdrop colour
    return verts, faces, colours


def synthetic_views(backdrop: str, count: int = 4, width: int = 160, height: int = 120,
                    noise: float = 0.02, shift_x: float = 0.0, spots: bool = False,
                    specks: int = 0, seed: int = 0) -> list[SyntheticView]:
    """`count` views on a ring (20 degrees up, distance 5) of `synthetic_object`.

    backdrop: a key of `BACKDROPS`; noise: Gaussian noise's standard deviation;
    shift_x: the cameras' horizontal lens shift (0.3 pushes the object over the
    image's left border); spots: backdrop-coloured patches on the object; specks: how
    many small bright dots to scatter over the backdrop (not part of the object).
    """
    if backdrop not in BACKDROPS:
        raise ValueError(f"backdrop must be one of {', '.join(BACKDROPS)}, got {backdrop!r}")
    colour = np.asarray(BACKDROPS[backdrop])
    verts, faces, colours = synthetic_object(spots)
    colours[colours[:, 0] < 0] = colour
    cams = [blender_camera(matrix_world=m, resolution_x=width, resolution_y=height, lens=50.0,
                           shift_x=shift_x)
            for m in orbit_cameras(count, [20.0], 5.0, azimuth_offset_deg=15.0)]
    settings = RenderSettings(sigma=0.05, background_color=tuple(colour),
                              lighting=Lighting(ambient=0.6, directional=0.5,
                                                direction=(0.3, -0.5, 0.8)))
    with torch.no_grad():
        rgba = render(torch.tensor(verts), torch.tensor(faces), Cameras.from_matrices(
            cams, dtype=torch.float64), torch.tensor(colours), settings).numpy()
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    falloff = (1.0 - 0.15 * ((xs - 0.5) ** 2 + (ys - 0.4) ** 2))[..., None]
    views = []
    for k, cam in enumerate(cams):
        image = rgba[k, ..., :3] * falloff + rng.normal(0.0, noise, (height, width, 3))
        _scatter_specks(image, rgba[k, ..., 3], specks, rng)
        views.append(SyntheticView(f"view{k:02d}", np.clip(image, 0, 1).astype(np.float32),
                                   rgba[k, ..., 3].astype(np.float32), cam))
    return views


def _scatter_specks(image: np.ndarray, alpha: np.ndarray, count: int, rng) -> None:
    """Paint `count` bright 2x2 dots into `image` (H, W, 3) where `alpha` (H, W) is 0."""
    h, w = alpha.shape
    placed = 0
    while placed < count:
        y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        if alpha[max(0, y - 3):y + 5, max(0, x - 3):x + 5].max() > 0.01:
            continue
        image[y:y + 2, x:x + 2] = rng.uniform(0.6, 1.0, 3)
        placed += 1
