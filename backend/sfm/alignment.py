"""Similarity transforms between two frames, and how far solved cameras are from true ones.

numpy only. A similarity maps a point x to ``scale * rotation @ x + translation``; a
structure-from-motion solution is defined only up to one, so solved cameras are
compared with known ones after the similarity that best aligns their centres
(Umeyama, "Least-squares estimation of transformation parameters between two point
patterns", PAMI 1991).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.camera import camera_centres


@dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation.

    scale: positive float; rotation: (3, 3) float64, proper (det +1); translation: (3,).
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> Similarity:
        return Similarity(1.0, np.eye(3), np.zeros(3))

    def apply(self, points) -> np.ndarray:
        """Points (..., 3) -> transformed points (..., 3) float64."""
        points = np.asarray(points, dtype=np.float64)
        return self.scale * points @ self.rotation.T + self.translation

    def then(self, other: Similarity) -> Similarity:
        """The similarity that applies ``self`` first, then ``other``."""
        return Similarity(other.scale * self.scale, other.rotation @ self.rotation,
                          other.scale * other.rotation @ self.translation + other.translation)

    def camera_pose(self, world_to_camera) -> np.ndarray:
        """A world -> camera pose (4, 4) re-expressed in the transformed world.

        The camera frame is scaled with the world, which leaves the image unchanged:
        R' = R @ rotation.T and t' = scale * t - R' @ translation.
        """
        pose = np.asarray(world_to_camera, dtype=np.float64)
        rotation = pose[:3, :3] @ self.rotation.T
        moved = np.eye(4)
        moved[:3, :3] = rotation
        moved[:3, 3] = self.scale * pose[:3, 3] - rotation @ self.translation
        return moved


def umeyama(source, target, with_scale: bool = True) -> Similarity:
    """The similarity minimising sum |target_i - (s R source_i + t)|^2.

    source, target: (N, 3) corresponding points, N >= 3, not all on one line.
    with_scale: False fixes s = 1 (a rigid motion).
    Raises ValueError for mismatched shapes or degenerate points.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 3 or source.shape != target.shape:
        raise ValueError(f"umeyama needs two (N, 3) arrays of the same shape, got {source.shape} "
                         f"and {target.shape}")
    if len(source) < 3:
        raise ValueError(f"umeyama needs at least 3 corresponding points, got {len(source)}")
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    variance_s = np.mean(np.sum(centred_s**2, axis=1))
    covariance = centred_t.T @ centred_s / len(source)
    u, d, vt = np.linalg.svd(covariance)
    if d[1] <= 1e-12 * max(d[0], 1e-300):
        raise ValueError("the points lie on one line (or one point): a rotation about that line "
                         "is undetermined")
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0  # the closest proper rotation, not a reflection
    rotation = u @ np.diag(sign) @ vt
    scale = float(np.sum(d * sign) / variance_s) if with_scale else 1.0
    return Similarity(scale, rotation, mean_t - scale * rotation @ mean_s)


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
