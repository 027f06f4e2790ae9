"""The differentiable Soft Rasterizer: torch, Numba for the CPU path, CuPy for the CUDA path.

May import `backend.core`; never `backend.fit` or `backend.process`. Within it imports
run one way: renderer -> raster_cpu, raster_cuda -> binning, screen_space -> settings.

- `renderer`: the public `render` / `render_silhouette` and `Cameras` (re-exports the settings).
- `settings`: `RenderSettings` and `Lighting`.
- `screen_space`: projected faces (`ScreenFaces`) and which of them are rasterized.
- `raster_cpu`: the CPU passes (loops compiled by Numba, analytic backward).
- `raster_cuda`: the CUDA passes (kernels/soft_raster.cu through CuPy).
- `binning`: which faces may touch which pixels or tiles.
"""

from .renderer import Cameras, Lighting, RenderSettings, render, render_silhouette

__all__ = ["Cameras", "Lighting", "RenderSettings", "render", "render_silhouette"]
