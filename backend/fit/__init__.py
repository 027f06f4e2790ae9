"""Fitting a mesh to posed images: torch, scipy, scikit-image.

May import `backend.core` and `backend.render`; never `backend.process`.

- `fitting`: `fit` (the algorithm in one function) and the public API (`View`,
  `FitOptions`, `Progress`, `FitResult`, ...).
- `inputs`: the checked views, the device, the initial mesh and colours.
- `targets`: the normalised frame and the target images per resolution level.
- `schedule`: each iteration's resolution, sigma, learning rate and views.
- `state`: the optimised parameters and the one place the topology changes.
- `loop`: the iterations, losses summed, progress reported.
- `evaluation`: hard IoU of full-resolution silhouettes.
- `losses`: image and geometric loss terms.
- `mesh_ops`: mesh topology and geometry helpers.
- `visual_hull`: silhouettes, carving, and the initial meshes.
- `recarve`: a mesh intersected with the visual hull (opens through-holes).
"""

from .fitting import FitError, FitOptions, FitResult, Progress, View, fit

__all__ = ["FitError", "FitOptions", "FitResult", "Progress", "View", "fit"]
