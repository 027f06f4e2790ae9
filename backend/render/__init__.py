"""The differentiable Soft Rasterizer: torch, and CuPy for the CUDA path.

May import `backend.core`; never `backend.fit` or `backend.process`.

- `renderer`: the public `render` / `render_silhouette`, cameras, lighting, settings.
- `raster_cpu`: the CPU fine pass (pure torch with autograd).
- `raster_cuda`: the CUDA fine pass (kernels/soft_raster.cu through CuPy).
- `binning`: which faces may touch which pixels or tiles.
"""
