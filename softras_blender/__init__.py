"""softras-blender: fit a mesh to reference images with a differentiable Soft Rasterizer.

A Blender 4.2+ extension. The fitting itself runs in a separate backend process
(`client.BackendClient`, PyTorch and CUDA kernels); this package only reads and
writes Blender data. Registration is instant: heavy modules load when a fit starts.
"""

from __future__ import annotations

from . import operators, panels, preferences, properties

# Registered in this order, unregistered in reverse.
modules = (properties, preferences, operators, panels)


def register():
    for module in modules:
        module.register()


def unregister():
    for module in reversed(modules):
        module.unregister()
