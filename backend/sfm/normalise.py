"""Put a solved scene in a sensible frame: Z up, the subject at the origin, a useful scale.

numpy only. Structure from motion fixes the scene only up to a similarity; this picks
one from the cameras themselves:
- origin: the point nearest to every camera's optical axis (where the photos look);
- up: the normal of the plane that best fits the camera centres (a ring around the
  subject), signed by the photos' own up direction (by the cameras looking down when
  the photos were taken sideways); or that up direction itself;
  or a gravity vector the caller names;
- azimuth: the first photo's camera on the -Y side, looking along +Y (Blender's
  front view);
- scale: a camera distance the caller knows, else the subject about unit radius
  (the 90th percentile distance of the triangulated points from the origin, among
  the points inside the region every photo frames).
"""

from __future__ import annotations

import numpy as np

from ..core.camera import camera_centres, nearest_point_to_axes
from .alignment import Similarity
from .result import SfmError, SolveResult

UP_CHOICES = ("auto", "ring", "camera")
MAX_PLANE_FLATNESS = 0.5  # ring plane: its normal's spread / the smaller in-plane spread
MIN_SUBJECT_POINTS = 20
MIN_UP_AGREEMENT = 0.3  # |cos| of the photos' up and the ring normal that signs the normal
SUBJECT_PERCENTILE = 90.0


def normalise_scene(result: SolveResult, *, up="auto",
                    known_distance: float | None = None) -> SolveResult:
    """The solve in a new world frame (see the module docstring).

    up: "ring" (the camera ring's plane normal; SfmError when the centres do not lie
        near a plane), "camera" (the mean of the photos' up directions, for upright
        photos), "auto" ("ring" when the plane is well defined, else "camera"), or a
        3-vector: the up direction in the solved frame (e.g. a measured gravity, negated).
    known_distance: the median distance from the cameras to the subject, in the units
        wanted (e.g. metres); None scales the subject to about unit radius.
    The returned result's ``frame`` says which choices were made.
    """
    if len(result.cameras) < 2:
        raise SfmError(f"normalising needs at least 2 solved cameras, got {len(result.cameras)}")
    poses = np.stack([c.camera.world_to_camera for c in result.cameras])
    centres = camera_centres(poses)
    forward = poses[:, 2, :3]  # each camera's +z (viewing direction) in the world
    image_up = -poses[:, 1, :3]  # each camera's -y (up in the image) in the world
    origin, origin_source = _subject_centre(centres, forward, result.points)
    up_vector, up_source = _up_direction(up, centres, image_up, forward)
    rotation = _rotation_to_z_up(up_vector, centres[0] - origin, forward[0])
    scale, scale_source = _scale(result, centres, origin, known_distance)
    similarity = Similarity(scale, rotation, -scale * rotation @ origin)
    frame = {"source": "normalised", "origin": origin_source, "up": up_source,
             "scale": scale_source, "similarity_scale": scale}
    return result.transformed(similarity, frame)


def _subject_centre(centres, forward, points) -> tuple[np.ndarray, str]:
    """The point nearest to all optical axes, or (axes nearly parallel) the median of
    the triangulated points."""
    centre = nearest_point_to_axes(centres, forward)
    if centre is not None:
        return centre, "the point the cameras look at"
    if len(points) == 0:
        raise SfmError("the cameras look in parallel and no points were triangulated: the "
                       "scene has no centre to put at the origin")
    return np.median(points, axis=0), "the median of the triangulated points (the cameras " \
        "look in parallel)"


def _ring_normal(centres) -> np.ndarray | None:
    """Unit normal of the best-fit plane of the centres (N, 3), or None when the centres
    do not spread over a plane (collinear, or as spread out of the plane as in it)."""
    if len(centres) < 3:
        return None
    _, spread, vt = np.linalg.svd(centres - centres.mean(axis=0))
    if spread[1] <= 1e-9 * spread[0] or spread[2] > MAX_PLANE_FLATNESS * spread[1]:
        return None
    return vt[2]


def _up_direction(up, centres, image_up, forward) -> tuple[np.ndarray, str]:
    """The world's up (3,) unit vector in the solved frame, and where it came from.

    The ring's normal is signed by the photos' mean up; when the photos were taken
    sideways (that up lies nearly in the ring's plane) by the cameras looking down on
    the subject, as most captures do."""
    mean_up = image_up.mean(axis=0)
    if not isinstance(up, str):
        vector = np.asarray(up, dtype=np.float64).reshape(-1)
        if vector.shape != (3,) or not np.all(np.isfinite(vector)) or not vector.any():
            raise ValueError(f"up must be one of {UP_CHOICES} or a non-zero 3-vector, got {up!r}")
        return vector / np.linalg.norm(vector), "the given up vector"
    if up not in UP_CHOICES:
        raise ValueError(f"up must be one of {UP_CHOICES} or a non-zero 3-vector, got {up!r}")
    normal = _ring_normal(centres) if up in ("auto", "ring") else None
    if normal is not None:
        agreement = normal @ mean_up / max(np.linalg.norm(mean_up), 1e-12)
        if abs(agreement) >= MIN_UP_AGREEMENT:
            return (normal if agreement > 0 else -normal), "the camera ring's plane normal"
        looking_down = forward.mean(axis=0) @ normal <= 0
        return (normal if looking_down else -normal), "the camera ring's plane normal, " \
            "the cameras looking down (the photos are sideways)"
    if up == "ring":
        raise SfmError("the cameras do not lie near one plane (a ring around the subject), so "
                       "the ring gives no up direction: use up='camera' (the photos' own up) "
                       "or give the up vector")
    if np.linalg.norm(mean_up) < 0.1:
        raise SfmError("the photos' up directions cancel out (photos rotated every way): give "
                       "the up vector")
    return mean_up / np.linalg.norm(mean_up), "the photos' mean up direction"


def _rotation_to_z_up(up, first_offset, first_forward) -> np.ndarray:
    """(3, 3) rotation taking ``up`` to +Z and the first camera's horizontal offset from
    the subject (else, when it sits right above it, its viewing direction) to -Y."""
    horizontal = first_offset - (first_offset @ up) * up
    if np.linalg.norm(horizontal) < 1e-9 * max(np.linalg.norm(first_offset), 1e-300):
        horizontal = -(first_forward - (first_forward @ up) * up)
    y_axis = -horizontal / np.linalg.norm(horizontal)
    x_axis = np.cross(y_axis, up)
    return np.stack([x_axis, y_axis, up])


def _scale(result: SolveResult, centres, origin, known_distance) -> tuple[float, str]:
    """The scale factor, and where it came from (see the module docstring)."""
    distances = np.linalg.norm(centres - origin, axis=1)
    if known_distance is not None:
        if not (np.isfinite(known_distance) and known_distance > 0):
            raise ValueError(f"known_distance must be a positive distance, got {known_distance}")
        return float(known_distance / np.median(distances)), \
            f"the median camera distance set to {known_distance}"
    # Half the width each photo frames at the subject's distance, in solved units.
    half_view = np.median([d * min(c.camera.width / (2 * c.camera.intrinsics[0, 0]),
                                   c.camera.height / (2 * c.camera.intrinsics[1, 1]))
                           for d, c in zip(distances, result.cameras, strict=True)])
    radii = np.linalg.norm(result.points - origin, axis=1)
    radii = radii[radii <= half_view]
    if len(radii) >= MIN_SUBJECT_POINTS:
        return float(1.0 / np.percentile(radii, SUBJECT_PERCENTILE)), \
            "the subject's points at about unit radius"
    return float(1.0 / half_view), "the region the photos frame at unit radius (too few " \
        "triangulated points near the subject)"
