"""Similarity transforms, and where a set of cameras puts the object it sees.

numpy only. A similarity maps a point x to ``scale * rotation @ x + translation``. Moving
every camera and the scene by one similarity changes no image (for perspective cameras;
orthographic ones see the scale), so the images fix a scene's frame only up to one:
`umeyama` finds the similarity between two point sets (Umeyama, "Least-squares
estimation of transformation parameters between two point patterns", PAMI 1991) and
`reconstruction_drift` the one by which corrected cameras move the scene that the
cameras they correct saw (camera refinement keeps the object where the given cameras
put it by undoing it; docs/design.md, "Which frame refined cameras keep").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .camera import CameraMatrices


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

    def inverse(self) -> Similarity:
        """The similarity that undoes this one."""
        rotation = self.rotation.T
        return Similarity(1.0 / self.scale, rotation,
                          -rotation @ self.translation / self.scale)

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


def project(camera: CameraMatrices, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (P, 2) of world ``points`` (P, 3) in ``camera`` and their derivative (P, 2, 3)
    in the points; float64. Perspective or orthographic, as `backend.render.renderer`
    projects them (pixel centres at half-integers are the caller's affair)."""
    rotation = camera.world_to_camera[:3, :3]
    cam = points @ rotation.T + camera.world_to_camera[:3, 3]
    k = camera.intrinsics[:2, :2]
    if camera.orthographic:
        pixels = cam[:, :2] @ k.T + camera.intrinsics[:2, 2]
        return pixels, np.broadcast_to(k @ rotation[:2], (len(points), 2, 3)).copy()
    z = cam[:, 2:3]
    xy = cam[:, :2] / z
    pixels = xy @ k.T + camera.intrinsics[:2, 2]
    # d(xy)/d(cam) = [I | -xy] / z, then through K and the rotation
    d_xy = np.concatenate([np.broadcast_to(np.eye(2), (len(points), 2, 2)), -xy[:, :, None]],
                          axis=2) / z[:, :, None]
    return pixels, np.einsum("ij,pjk,kl->pil", k, d_xy, rotation)


def triangulate(cameras: Sequence[CameraMatrices], pixels: np.ndarray, start: np.ndarray,
                steps: int = 4) -> np.ndarray:
    """Points (P, 3) float64 whose projections by ``cameras`` (N of them) are nearest, in
    the least-squares sense over all N, to ``pixels`` (N, P, 2): Gauss-Newton from
    ``start`` (P, 3), which must be close (every point in front of every camera)."""
    points = np.array(start, dtype=np.float64)
    for _ in range(steps):
        normal = np.zeros((len(points), 3, 3))
        gradient = np.zeros((len(points), 3))
        for camera, target in zip(cameras, pixels, strict=True):
            seen, jacobian = project(camera, points)
            normal += np.einsum("pki,pkj->pij", jacobian, jacobian)
            gradient += np.einsum("pki,pk->pi", jacobian, seen - target)
        points -= np.linalg.solve(normal, gradient[..., None])[..., 0]
    return points


def reconstruction_drift(given: Sequence[CameraMatrices], corrected: Sequence[CameraMatrices],
                         points: np.ndarray) -> Similarity:
    """Where ``corrected`` cameras put what ``given`` ones saw: the similarity that best
    maps ``points`` (P, 3; at least 3, not on one line: samples of the object) onto the
    points the corrected cameras triangulate from the pixels at which the given cameras
    see them. Rigid (scale 1) when any camera is orthographic, whose images see the
    scale. A correction whose drift is the identity leaves the object where it was."""
    points = np.asarray(points, dtype=np.float64)
    pixels = np.stack([project(camera, points)[0] for camera in given])
    moved = triangulate(corrected, pixels, points)
    return umeyama(points, moved, with_scale=not any(c.orthographic for c in given))


def keep_reconstruction(given: Sequence[CameraMatrices], corrected: Sequence[CameraMatrices],
                        points: np.ndarray) -> list[CameraMatrices]:
    """``corrected`` moved, all together, by the inverse of their `reconstruction_drift`:
    the same images of the scene, which they now put where ``given`` put it."""
    undo = reconstruction_drift(given, corrected, points).inverse()
    return [CameraMatrices(c.intrinsics, undo.camera_pose(c.world_to_camera), c.width,
                           c.height, c.orthographic) for c in corrected]


def ball_points(centre: np.ndarray, radius: float, count: int = 64) -> np.ndarray:
    """(2 * count + 1, 3) float64 samples of a ball: its centre and ``count`` points on each
    of the spheres of ``radius`` and half of it (Fibonacci spirals, deterministic)."""
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    ring = np.sqrt(1.0 - z**2)
    angle = np.pi * (3.0 - np.sqrt(5.0)) * i
    sphere = np.stack([ring * np.cos(angle), ring * np.sin(angle), z], axis=1)
    centre = np.asarray(centre, dtype=np.float64)
    return np.concatenate([centre[None], centre + radius * sphere,
                           centre + 0.5 * radius * sphere])
