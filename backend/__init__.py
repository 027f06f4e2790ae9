"""softras-blender's backend: a differentiable Soft Rasterizer and the mesh fitter on top.

The heavy modules (torch, CuPy) load on first use, so the torch-free parts
(`backend.core.camera`, `backend.core.protocol`) can be imported from Blender's own Python.

    from backend import render, RenderSettings, Cameras
    from backend import FitOptions, View  # and `from backend.fit.fitting import fit`
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "render": "backend.render.renderer",
    "render_silhouette": "backend.render.renderer",
    "RenderSettings": "backend.render.renderer",
    "Lighting": "backend.render.renderer",
    "Cameras": "backend.render.renderer",
    "FitOptions": "backend.core.options",
    "FitError": "backend.core.options",
    "View": "backend.fit.fitting",
    "FitResult": "backend.fit.fitting",
    "Progress": "backend.fit.fitting",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'backend' has no attribute {name!r}")
