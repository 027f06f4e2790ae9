"""Structure from motion: cameras for photos that have none (pycolmap on the CPU).

    from backend.sfm import solve_cameras, write_colmap_model
    result = solve_cameras("photos/", on_progress=lambda stage, fraction, msg: ...)
    write_colmap_model(result, "photos/sparse")

May import backend.core and numpy; pycolmap is imported only by `stages`, in child
processes. See docs/design.md, "Structure from motion".
"""

from .alignment import PoseErrors, Similarity, pose_errors, umeyama
from .normalise import normalise_scene
from .result import (
    STAGES,
    PycolmapMissing,
    SfmError,
    SolveCancelled,
    SolvedCamera,
    SolveResult,
    UnregisteredImage,
    write_colmap_model,
)
from .solve import list_photos, pycolmap_install_command, solve_cameras

__all__ = [
    "STAGES", "PoseErrors", "PycolmapMissing", "SfmError", "Similarity", "SolveCancelled",
    "SolveResult", "SolvedCamera", "UnregisteredImage", "list_photos", "normalise_scene",
    "pose_errors", "pycolmap_install_command", "solve_cameras", "umeyama", "write_colmap_model",
]
