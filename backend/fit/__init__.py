"""Fitting a mesh to posed images: torch, scipy, scikit-image.

May import `backend.core` and `backend.render`; never `backend.process`.

- `fitting`: `fit`, `View`, the optimisation loop.
- `losses`: image and geometric loss terms.
- `mesh_ops`: mesh topology and geometry helpers.
- `visual_hull`: silhouettes, carving, and the initial meshes.
"""
