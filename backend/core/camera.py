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
    world_to_camera = _BLENDER_TO_CV @ np.linalg.inv(normalized)
    return CameraMatrices(intrinsics, world_to_camera, width, height, camera_type == "ORTHO")


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
) -> list[np.ndarray]:
    """World matrices (4, 4) of cameras on a sphere around ``target``, looking at it."""
    mats = []
    for elev in elevations_deg:
        for i in range(count_azimuth):
            az = np.radians(azimuth_offset_deg + 360.0 * i / count_azimuth)
            el = np.radians(elev)
            eye = np.asarray(target) + distance * np.array(
                [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]
            )
            mats.append(look_at(eye, target))
    return mats
