"""softras-blender: fit a mesh to reference images with a differentiable Soft Rasterizer.

A Blender 4.2+ extension. The fitting itself runs in a separate backend process
(`client.BackendClient`, PyTorch and CUDA kernels); this package only reads and
writes Blender data. Importing the package loads nothing (so its bpy-free helpers,
`silhouettes`, `environment`, `fit_options`, import without Blender); `register`
loads the Blender modules, and the heavy ones load only when a fit starts.
"""

from __future__ import annotations


def _modules():
    """The modules with classes to register, in registration order."""
    from . import (
        camera_operators,
        camera_refine_ops,
        operators,
        panels,
        preferences,
        preview,
        properties,
        solve_operators,
    )

    # camera_operators and solve_operators after panels: their panels are children of the
    # fit panel.
    return (properties, preferences, operators, camera_refine_ops, preview, panels,
            camera_operators, solve_operators)


def register():
    for module in _modules():
        module.register()


def unregister():
    for module in reversed(_modules()):
        module.unregister()
