"""Blender's camera model as plain numbers: intrinsics and extrinsics for the rasterizer.

Standard library and numpy only (no bpy, no torch), so the Blender add-on and the
backend share this one definition.

Conventions (OpenCV-like, what the rasterizer consumes):
- camera coordinates: x right, y down, z forward (the view depth, > 0 in front);
- pixel coordinates: u right, v down from the image's top-left corner, pixel i's
  centre at i + 0.5;
- perspective: ``[u, v, 1] ~ K @ X_cam``;
  orthographic: ``[u, v] = K[:2, :2] @ X_cam[:2] + K[:2, 2]``.

Blender's camera looks down -Z with +Y up, so ``X_cam = diag(1, -1, -1) @ M @ X_world``
with ``M = matrix_world.normalized().inverted()`` (object scale ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
CAMERA_TYPES = ("PERSP", "ORTHO")

_BLENDER_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class CameraMatrices:
    """One camera, ready for the rasterizer.

    intrinsics: (3, 3) float64, K in pixels.
    world_to_camera: (4, 4) float64, world -> camera (x right, y down, z forward).
    width, height: the rendered image size in pixels.
    orthographic: True for an orthographic camera.
    """

    intrinsics: np.ndarray
    world_to_camera: np.ndarray
    width: int
    height: int
    orthographic: bool

    def resized(self, width: int, height: int) -> CameraMatrices:
        """The same camera rendering ``width`` x ``height`` pixels.

        Pixel coordinates scale with the image (u' = u * width / W), so K is multiplied
        by diag(width / W, height / H, 1); the pose is unchanged.
        """
        if (width, height) == (self.width, self.height):
            return self
        scale = np.diag([width / self.width, height / self.height, 1.0])
        return CameraMatrices(scale @ self.intrinsics, self.world_to_camera, int(width),
                              int(height), self.orthographic)

    def to_dict(self) -> dict:
        """Plain data (lists, numbers) for JSON or the wire."""
        return {
            "intrinsics": self.intrinsics.tolist(),
            "world_to_camera": self.world_to_camera.tolist(),
            "width": self.width,
            "height": self.height,
            "orthographic": self.orthographic,
        }

    @staticmethod
    def from_dict(d: dict) -> CameraMatrices:
        return CameraMatrices(
            intrinsics=np.asarray(d["intrinsics"], dtype=np.float64).reshape(3, 3),
            world_to_camera=np.asarray(d["world_to_camera"], dtype=np.float64).reshape(4, 4),
            width=int(d["width"]),
            height=int(d["height"]),
            orthographic=bool(d["orthographic"]),
        )


def blender_camera(
    *,
    matrix_world,
    resolution_x: int,
    resolution_y: int,
    resolution_percentage: int = 100,
    lens: float = 50.0,
    sensor_width: float = 36.0,
    sensor_height: float = 24.0,
    sensor_fit: str = "AUTO",
    shift_x: float = 0.0,
    shift_y: float = 0.0,
    pixel_aspect_x: float = 1.0,
    pixel_aspect_y: float = 1.0,
    camera_type: str = "PERSP",
    ortho_scale: float = 6.0,
) -> CameraMatrices:
    """Convert Blender's camera and render settings into a `CameraMatrices`.

    Every argument is the plain number of the Blender property of the same name
    (``camera.data.lens``, ``scene.render.resolution_x``, ...); ``matrix_world`` is
    the camera object's (4, 4) world matrix (any nested sequence or array) and
    ``camera_type`` is ``camera.data.type``. Raises ValueError on settings Blender
    itself would not render (zero focal length, empty image, unknown fit).
    """
    sensor_fit = str(sensor_fit).upper()
    camera_type = str(camera_type).upper()
    if sensor_fit not in SENSOR_FITS:
        raise ValueError(f"sensor_fit must be one of {SENSOR_FITS}, got {sensor_fit!r}")
    if camera_type not in CAMERA_TYPES:
        raise ValueError(
            f"camera type {camera_type!r} is not supported: use a perspective or orthographic "
            "camera (panoramic cameras cannot be fitted)"
        )
    # Blender computes the pixel size with integer arithmetic.
    width = int(resolution_x) * int(resolution_percentage) // 100
    height = int(resolution_y) * int(resolution_percentage) // 100
    if width < 1 or height < 1:
        raise ValueError(
            f"the render size is {width}x{height} pixels: raise the resolution or its percentage"
        )
    if not (pixel_aspect_x > 0 and pixel_aspect_y > 0):
        raise ValueError("pixel aspect x and y must both be positive")
    sensor = sensor_height if sensor_fit == "VERTICAL" else sensor_width
    if camera_type == "PERSP":
        if not (np.isfinite(lens) and lens > 0):
            raise ValueError(f"the camera's focal length is {lens} mm: it must be positive")
        if not (np.isfinite(sensor) and sensor > 0):
            raise ValueError(f"the camera's sensor size is {sensor} mm: it must be positive")
    elif not (np.isfinite(ortho_scale) and ortho_scale > 0):
        raise ValueError(f"the orthographic scale is {ortho_scale}: it must be positive")

    if sensor_fit == "AUTO":
        horizontal = pixel_aspect_x * width >= pixel_aspect_y * height
    else:
        horizontal = sensor_fit == "HORIZONTAL"
    ycor = pixel_aspect_y / pixel_aspect_x
    viewfac = float(width) if horizontal else ycor * height

    # Perspective: pixels per unit of x/z; orthographic: pixels per world unit.
    fx = viewfac / ortho_scale if camera_type == "ORTHO" else lens / sensor * viewfac
    fy = fx / ycor
    cx = width / 2.0 - shift_x * viewfac
    cy = height / 2.0 + shift_y * viewfac / ycor
    intrinsics = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    return CameraMatrices(intrinsics, world_to_camera(matrix_world), width, height,
                          camera_type == "ORTHO")


def world_to_camera(matrix_world) -> np.ndarray:
    """The world -> camera pose (4, 4) float64 (x right, y down, z forward) of a Blender
    camera's ``matrix_world`` (any (4, 4) nested sequence); object scale is ignored."""
    world = np.array(matrix_world, dtype=np.float64)
    if world.size != 16:
        raise ValueError(
            f"matrix_world must be the camera's 4x4 world matrix, got shape {world.shape}"
        )
    world = world.reshape(4, 4)
    if not np.all(np.isfinite(world)):
        raise ValueError("the camera's world matrix has NaN or infinite entries")
    rotation = world[:3, :3]
    norms = np.linalg.norm(rotation, axis=0)
    if np.any(norms < 1e-12):
        raise ValueError("the camera's world matrix is singular (zero scale on an axis)")
    normalized = np.eye(4)
    normalized[:3, :3] = rotation / norms
    normalized[:3, 3] = world[:3, 3]
    return _BLENDER_TO_CV @ np.linalg.inv(normalized)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """A Blender camera world matrix (4, 4) at ``eye`` looking at ``target``, +Z up.

    Handy for building test cameras; matches ``Vector.to_track_quat('-Z', 'Y')``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    up = np.asarray(up, dtype=np.float64)
    if abs(np.dot(forward, up)) > 0.999:
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    world = np.eye(4)
    world[:3, 0] = right
    world[:3, 1] = cam_up
    world[:3, 2] = -forward
    world[:3, 3] = eye
    return world


def orbit_cameras(
    count_azimuth: int,
    elevations_deg,
    distance: float,
    target=(0.0, 0.0, 0.0),
    azimuth_offset_deg: float = 0.0,
    *,
    step_deg: float | None = None,
    axis=(0.0, 0.0, 1.0),
    clockwise: bool = False,
) -> list[np.ndarray]:
    """World matrices (4, 4) of cameras on rings around ``target``, looking at it.

    For each elevation (degrees above the plane perpendicular to ``axis``) in turn,
    ``count_azimuth`` cameras ``step_deg`` apart (default 360 / count: a full ring),
    the first at ``azimuth_offset_deg``. Azimuth 0 is the world +X direction projected
    onto that plane (+Y when the axis is X); azimuths turn counter-clockwise seen from
    the axis' tip unless ``clockwise``. The image's up direction follows ``axis``.
    """
    if count_azimuth < 1:
        raise ValueError(f"the number of views per ring must be at least 1, got {count_azimuth}")
    if not (np.isfinite(distance) and distance > 0):
        raise ValueError(f"the camera distance must be positive, got {distance}")
    up, east, north = _ring_basis(axis)
    step = 360.0 / count_azimuth if step_deg is None else float(step_deg)
    sign = -1.0 if clockwise else 1.0
    target = np.asarray(target, dtype=np.float64)
    mats = []
    for elev in elevations_deg:
        el = np.radians(elev)
        for i in range(count_azimuth):
            az = np.radians(azimuth_offset_deg + sign * step * i)
            direction = np.cos(el) * (np.cos(az) * east + np.sin(az) * north) + np.sin(el) * up
            mats.append(look_at(target + distance * direction, target, up=up))
    return mats


def _ring_basis(axis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ``axis`` and two unit vectors completing a right-handed frame (east, north, up).

    East is world +X made perpendicular to the axis (+Y when the axis is along X), so
    the default Z axis gives east = +X, north = +Y.
    """
    up = np.asarray(axis, dtype=np.float64).reshape(3)
    length = np.linalg.norm(up)
    if not (np.isfinite(length) and length > 1e-12):
        raise ValueError(f"the turntable axis must be a non-zero vector, got {tuple(up)}")
    up = up / length
    east = np.array([1.0, 0.0, 0.0])
    if abs(up @ east) > 0.999:
        east = np.array([0.0, 1.0, 0.0])
    east = east - (east @ up) * up
    east /= np.linalg.norm(east)
    return up, east, np.cross(up, east)


def turntable_count(count: int | None, step_deg: float | None) -> int:
    """Views per ring for a turntable given as a count, a step, or both.

    A step alone gives as many views as fit in one turn (5 degrees: 72 views; a step
    that does not divide 360 leaves a gap before the first view).
    """
    if count is not None:
        if count < 1:
            raise ValueError(f"the number of views must be at least 1, got {count}")
        return int(count)
    if step_deg is None:
        raise ValueError("give the number of views or the angle between two views")
    if not (np.isfinite(step_deg) and 0 < abs(step_deg) <= 360):
        raise ValueError(f"the angle step must be between 0 and 360 degrees, got {step_deg}")
    # The tolerance absorbs a step stored as float32 in Blender (45 -> 45.0000012).
    return max(1, int(np.floor(360.0 / abs(step_deg) + 1e-4)))


def field_of_view_to_lens(fov_deg: float, sensor: float = 36.0) -> float:
    """Focal length in mm for a field of view (degrees) across a sensor of ``sensor`` mm."""
    if not (np.isfinite(fov_deg) and 0 < fov_deg < 180):
        raise ValueError(f"the field of view must be between 0 and 180 degrees, got {fov_deg}")
    return sensor / (2.0 * np.tan(np.radians(fov_deg) / 2.0))


# --- the inverse: plain intrinsics and pose -> Blender's settings ---------------------

SENSOR_WIDTH = 36.0  # mm, Blender's default sensor; any value reproduces the same pixels
SENSOR_HEIGHT = 24.0
ORTHONORMAL_TOLERANCE = 1e-6


def pixel_aspect(fx: float, fy: float) -> tuple[float, float]:
    """Blender's (pixel_aspect_x, pixel_aspect_y) for focal lengths fx, fy in pixels.

    ``fy / fx = ax / ay`` with both >= 1, as Blender requires.
    """
    if not (np.isfinite(fx) and np.isfinite(fy) and fx > 0 and fy > 0):
        raise ValueError(f"the focal lengths must be positive, got fx={fx}, fy={fy}")
    return (fy / fx, 1.0) if fy >= fx else (1.0, fx / fy)


def blender_settings(camera: CameraMatrices, aspect: float | None = None) -> dict:
    """Blender camera and render settings that reproduce ``camera``: the inverse of
    `blender_camera`, whose keyword arguments the returned dict holds.

    camera: K (3, 3) with zero skew and a world -> camera pose (4, 4) whose rotation is
    orthonormal with determinant +1 (a proper pose, as calibration files give).
    aspect: the fy / fx to use (default: the camera's own); a scene shares one pixel
    aspect, so `blender_scene_settings` passes the first camera's to all.
    The principal point becomes the shift, fx != fy the pixel aspect, and the sensor
    fit is chosen explicitly (horizontal when ``ax * W >= ay * H``, else vertical).
    """
    k = np.asarray(camera.intrinsics, dtype=np.float64)
    if abs(k[0, 1]) > 1e-9 * abs(k[0, 0]) or np.any(k[2] != [0.0, 0.0, 1.0]) or k[1, 0] != 0:
        raise ValueError(f"the intrinsics {k.tolist()} are not [[fx, 0, cx], [0, fy, cy], "
                         "[0, 0, 1]]: Blender cameras have no skew")
    fx, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    ax, ay = pixel_aspect(fx, fx * aspect if aspect is not None else k[1, 1])
    width, height = int(camera.width), int(camera.height)
    horizontal = ax * width >= ay * height
    ycor = ay / ax
    viewfac = float(width) if horizontal else ycor * height
    sensor = SENSOR_WIDTH if horizontal else SENSOR_HEIGHT
    _check_representable(width, height, max(ax, ay),
                         None if camera.orthographic else fx * sensor / viewfac)
    settings = {
        "matrix_world": camera_to_world(camera.world_to_camera).tolist(),
        "resolution_x": width,
        "resolution_y": height,
        "resolution_percentage": 100,
        "lens": fx * sensor / viewfac if not camera.orthographic else 50.0,
        "sensor_width": SENSOR_WIDTH,
        "sensor_height": SENSOR_HEIGHT,
        "sensor_fit": "HORIZONTAL" if horizontal else "VERTICAL",
        "shift_x": (width / 2.0 - cx) / viewfac,
        "shift_y": (cy - height / 2.0) * ycor / viewfac,
        "pixel_aspect_x": ax,
        "pixel_aspect_y": ay,
        "camera_type": "ORTHO" if camera.orthographic else "PERSP",
        "ortho_scale": viewfac / fx if camera.orthographic else 6.0,
    }
    return settings


def _check_representable(width: int, height: int, aspect: float, lens: float | None) -> None:
    """Blender's limits: images of 4 to 65536 pixels a side, pixel aspect at most 200,
    focal length at least 1 mm."""
    if not (4 <= width <= 65536 and 4 <= height <= 65536):
        raise ValueError(f"the image is {width}x{height} pixels: Blender renders 4 to 65536 "
                         "pixels a side")
    if aspect > 200:
        raise ValueError(f"fy/fx is {aspect:.4g} (or its inverse): Blender's pixel aspect "
                         "goes up to 200")
    if lens is not None and lens < 1.0:
        raise ValueError(f"the focal length is {lens:.3g} mm on a 36 mm sensor (a field of "
                         "view over 172 degrees): Blender's lenses start at 1 mm")


def camera_centres(world_to_camera) -> np.ndarray:
    """Poses (N, 4, 4) world -> camera [A | t] -> centres (N, 3) in the world: c = -A^-1 t.

    A solve rather than -A^T t, so a pose whose 3x3 part is a scaled rotation (the fit's
    normalised frame) gives its centre too.
    """
    poses = np.asarray(world_to_camera, dtype=np.float64)
    return -np.linalg.solve(poses[:, :3, :3], poses[:, :3, 3:])[..., 0]


def nearest_point_to_axes(origins, directions, min_spread: float = 0.01) -> np.ndarray | None:
    """The point (3,) with the least summed squared distance to the lines
    ``origins[i] + s * directions[i]`` ((N, 3) each; directions need not be unit), or
    None when the lines are too close to parallel: the smallest eigenvalue of
    mean(I - d d^T) below ``min_spread`` (0.01: directions about 6 degrees apart)."""
    directions = np.asarray(directions, dtype=np.float64)
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    projectors = np.eye(3) - directions[:, :, None] * directions[:, None, :]  # (N, 3, 3)
    normal = projectors.sum(axis=0)
    if np.linalg.eigvalsh(normal / len(directions))[0] < min_spread:
        return None
    return np.linalg.solve(normal, np.einsum("nij,nj->i", projectors, np.asarray(origins)))


def camera_to_world(world_to_camera) -> np.ndarray:
    """Blender's ``matrix_world`` (4, 4) for an OpenCV world -> camera pose (4, 4) [R | t].

    ``matrix_world = inverse(diag(1, -1, -1, 1) @ [R t; 0 1])``. Raises ValueError when
    R is not a rotation (not orthonormal within 1e-6, or a reflection).
    """
    pose = np.asarray(world_to_camera, dtype=np.float64).reshape(4, 4)
    rotation = pose[:3, :3]
    error = np.abs(rotation.T @ rotation - np.eye(3)).max()
    if not np.all(np.isfinite(pose)) or error > ORTHONORMAL_TOLERANCE:
        raise ValueError(f"the camera rotation is not orthonormal (R^T R differs from the "
                         f"identity by {error:.3g}): the file's pose is not a rigid motion")
    if np.linalg.det(rotation) < 0:
        raise ValueError("the camera rotation is a reflection (determinant -1): the file "
                         "uses a left-handed camera, which Blender cannot represent")
    world = np.eye(4)
    world[:3, :3] = rotation.T @ _BLENDER_TO_CV[:3, :3]
    world[:3, 3] = -rotation.T @ pose[:3, 3]
    return world


def blender_scene_settings(cameras, tolerance_px: float = 0.01, names=None) -> list[dict]:
    """`blender_settings` for cameras that must share one Blender scene.

    A scene has one resolution and one pixel aspect: every camera must have the same
    image size, and fy / fx may differ from the first camera's only by as little as
    moves no pixel of the frame by more than ``tolerance_px``. Raises ValueError naming
    (by ``names``, default their indices) the first camera that breaks either rule.
    """
    cameras = list(cameras)
    if not cameras:
        raise ValueError("there are no cameras to convert")
    names = [str(i) for i in range(len(cameras))] if names is None else list(names)
    first, first_name = cameras[0], names[0]
    ratio = first.intrinsics[1, 1] / first.intrinsics[0, 0]
    for i, cam in enumerate(cameras):
        if (cam.width, cam.height) != (first.width, first.height):
            raise ValueError(f"camera {names[i]} is {cam.width}x{cam.height} pixels but camera "
                             f"{first_name} is {first.width}x{first.height}: the images must "
                             "all have one size, since a Blender scene renders one size")
        k = cam.intrinsics
        reach = max(k[1, 2], cam.height - k[1, 2]) / k[1, 1]  # |y/z| at the frame's edge
        drift = abs(k[0, 0] * ratio - k[1, 1]) * reach
        if drift > tolerance_px:
            raise ValueError(
                f"camera {names[i]} has fy/fx = {k[1, 1] / k[0, 0]:.6f} but camera {first_name} "
                f"has {ratio:.6f}; "
                f"one pixel aspect for both would move pixels by up to {drift:.3g} px: a "
                "Blender scene has one pixel aspect, so calibrate with a shared one")
    return [blender_settings(cam, aspect=ratio) for cam in cameras]
