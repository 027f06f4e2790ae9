"""How far solved cameras are from true ones.

numpy only. A structure-from-motion solution is defined only up to a similarity
(`backend.core.similarity`, re-exported here), so solved cameras are compared with known
ones after the similarity that best aligns their centres (`umeyama`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.camera import camera_centres
from ..core.similarity import Similarity, umeyama

__all__ = ["PoseErrors", "Similarity", "pose_errors", "rotation_angle_deg", "umeyama"]


def rotation_angle_deg(a, b) -> np.ndarray:
    """Angles (N,) in degrees of the rotations taking a (N, 3, 3) to b (N, 3, 3).

    atan2(sin, cos) of the relative rotation, accurate near 0 where arccos is not.
    """
    relative = np.einsum("nij,nkj->nik", np.asarray(b), np.asarray(a))
    cosine = (np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0
    skew = relative - np.transpose(relative, (0, 2, 1))  # 2 sin(angle) [axis]_x
    sine = np.linalg.norm(skew[:, [2, 0, 1], [1, 2, 0]], axis=1) / 2.0
    return np.degrees(np.arctan2(sine, cosine))


@dataclass(frozen=True)
class PoseErrors:
    """Solved cameras against true ones after the best similarity of their centres.

    rotation_deg: (N,) angle between each aligned solved rotation and the true one.
    centre: (N,) distance between each aligned solved centre and the true one, in
    the true scene's units.
    similarity: solved world -> true world.
    """

    rotation_deg: np.ndarray
    centre: np.ndarray
    similarity: Similarity


def pose_errors(solved, truth) -> PoseErrors:
    """Compare solved poses (N, 4, 4) with true poses (N, 4, 4), world -> camera, in the
    same order; both sets may live in any frame and scale (N >= 3)."""
    solved = np.asarray(solved, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if solved.shape != truth.shape or solved.shape[1:] != (4, 4):
        raise ValueError(f"need two (N, 4, 4) pose arrays of one shape, got {solved.shape} and "
                         f"{truth.shape}")
    similarity = umeyama(camera_centres(solved), camera_centres(truth))
    aligned = np.stack([similarity.camera_pose(pose) for pose in solved])
    centre = np.linalg.norm(camera_centres(aligned) - camera_centres(truth), axis=1)
    return PoseErrors(rotation_angle_deg(aligned[:, :3, :3], truth[:, :3, :3]), centre,
                      similarity)
