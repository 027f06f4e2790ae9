"""softras-blender's backend: a differentiable Soft Rasterizer and the mesh fitter on top.

The heavy modules (torch, CuPy) load on first use, so the torch-free parts
(`backend.core.camera`, `backend.core.protocol`) can be imported from Blender's own Python.

    from backend.render import render, render_silhouette, RenderSettings, Cameras
    from backend.fit import fit, FitOptions, View

`backend.render` and `backend.fit` are the sub-packages (torch); the names below load
lazily from `backend` itself as well, for the torch-free ones' sake.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
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
