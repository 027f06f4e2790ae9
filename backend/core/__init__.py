"""The backend's torch-free core: standard library and numpy only.

Blender's own Python (the add-on) imports these modules, so nothing here may import
torch, CuPy, scipy or bpy, nor any other backend sub-package:

- `camera`: Blender's camera model as plain matrices.
- `camera_files`: cameras from and to COLMAP, transforms.json and Middlebury files.
- `mask_files`: finding each image's mask file by name.
- `mesh_arrays`: checking a triangle mesh given as arrays.
- `messages`: every message between the add-on and the backend: fields, builders, parsers.
- `options`: `FitOptions` and its defaults, shared with the add-on's panel.
- `protocol`: the wire format (frames) between the add-on and the backend process.
- `requirements`: the backend's Python packages (standard library only, old Pythons too).
- `threads`: the backend's CPU threading, chosen before torch loads.
"""
