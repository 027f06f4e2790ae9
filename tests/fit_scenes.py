"""Small fitting scenes for the hull and fitting tests: known meshes rendered by the
soft rasterizer from orbiting cameras (no Blender needed)."""

from __future__ import annotations

import numpy as np
import torch

from backend.core.camera import blender_camera, orbit_cameras
from backend.fit.fitting import View
from backend.fit.mesh_ops import as_triangles, icosphere, subdivide
from backend.render.renderer import Cameras, RenderSettings, render

CUBE_QUADS = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4],
                       [1, 5, 7, 3]])


def box(half=(0.8, 0.5, 0.4), center=(0.0, 0.0, 0.0), subdivisions: int = 0):
    """A closed box: vertices (V, 3) float64, faces (F, 3) int64, outward."""
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    v = v * np.asarray(half) + np.asarray(center)
    f, _ = as_triangles(CUBE_QUADS)
    for _ in range(subdivisions):
        v, f = subdivide(v, f)
    return v, f


def sphere(radius=1.0, center=(0.0, 0.0, 0.0), level: int = 2):
    v, f = icosphere(level)
    return v * radius + np.asarray(center), f


def cameras(size=(48, 48), elevations=(-25.0, 30.0), azimuths: int = 6, distance=5.0,
            target=(0.0, 0.0, 0.0), lens=50.0, azimuth_offset=0.0):
    width, height = size
    return [blender_camera(matrix_world=m, resolution_x=width, resolution_y=height, lens=lens)
            for m in orbit_cameras(azimuths, elevations, distance, target=target,
                                   azimuth_offset_deg=azimuth_offset)]


def render_images(vertices, faces, cams, colors=None) -> np.ndarray:
    """(B, H, W, 4) float32 RGBA of the mesh with near-hard edges (the 'photos')."""
    batch = Cameras.from_matrices(cams)
    with torch.no_grad():
        c = None if colors is None else torch.tensor(colors, dtype=torch.float32)
        img = render(torch.tensor(vertices, dtype=torch.float32), torch.tensor(faces), batch, c,
                     RenderSettings(sigma=0.01))
    return img.numpy()


def views_of(vertices, faces, cams, held_out=(), colors=None, prefix="view") -> list[View]:
    images = [render_images(vertices, faces, [cam], colors)[0] for cam in cams]
    return [View(cam, image, name=f"{prefix} {i}", held_out=i in held_out)
            for i, (cam, image) in enumerate(zip(cams, images, strict=True))]
