"""Calibrated cameras from files, and back: COLMAP, NeRF transforms.json, Middlebury.

Standard library and numpy only (the Blender add-on imports it). Every reader returns
`CameraRecord`s: the image the file names and a `camera.CameraMatrices` (K in pixels,
OpenCV world -> camera pose), which `camera.blender_scene_settings` turns into
Blender's settings. `load_camera_file` does all of it for an importer: read, find the
images, check the cameras fit one Blender scene.

Formats (pixel coordinates: origin at the image's top-left corner, pixel i's centre
at i + 0.5, as COLMAP, nerfstudio and this project's camera model use):
- COLMAP sparse models, text (cameras.txt, images.txt) or binary (cameras.bin,
  images.bin); models SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV. Lens
  distortion is not undistorted here: a camera whose distortion moves any pixel of
  its frame by more than `DISTORTION_TOLERANCE_PX` is refused with a message naming
  the model (docs/design.md, "Camera import", says why).
- NeRF / instant-ngp / nerfstudio transforms.json: ``transform_matrix`` is Blender's
  ``matrix_world``; intrinsics ``camera_angle_x`` (and ``camera_angle_y``) or
  ``fl_x, fl_y, cx, cy, w, h``, at the top level or per frame; ``mask_path``.
- Middlebury ``*_par.txt``: a count, then ``name k11..k33 r11..r33 t1 t2 t3`` per line.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .camera import (
    CameraMatrices,
    blender_scene_settings,
    camera_to_world,
    world_to_camera,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".webp", ".bmp", ".tga")
DISTORTION_TOLERANCE_PX = 0.01

# COLMAP's camera models: name -> (model id, parameter names).
COLMAP_MODELS = {
    "SIMPLE_PINHOLE": (0, ("f", "cx", "cy")),
    "PINHOLE": (1, ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": (2, ("f", "cx", "cy", "k1")),
    "RADIAL": (3, ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": (4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
}
# COLMAP models this importer refuses, by id (the binary format stores only the id).
COLMAP_OTHER_MODELS = {
    5: "OPENCV_FISHEYE", 6: "FULL_OPENCV", 7: "FOV", 8: "SIMPLE_RADIAL_FISHEYE",
    9: "RADIAL_FISHEYE", 10: "THIN_PRISM_FISHEYE", 11: "RAD_TAN_THIN_PRISM_FISHEYE",
}
_COLMAP_NAMES_BY_ID = {mid: name for name, (mid, _) in COLMAP_MODELS.items()}


class CameraFileError(ValueError):
    """A camera file that cannot be imported; the message names the file, the line
    (or byte offset, or frame) and the reason."""

    def __init__(self, path, reason: str, where: str | None = None):
        self.path, self.reason, self.where = str(path), reason, where
        super().__init__(f"{path}{', ' + where if where else ''}: {reason}")


@dataclass(frozen=True)
class CameraRecord:
    """One camera of a file.

    name: the camera's name (its image's file name without the extension).
    image: the image as the file names it (maybe a relative path, maybe no extension).
    camera: intrinsics (3, 3) and world -> camera pose (4, 4), OpenCV axes, image size.
    mask: the mask image the file names for it (nerfstudio ``mask_path``), or None.
    """

    name: str
    image: str
    camera: CameraMatrices
    mask: str | None = None


@dataclass(frozen=True)
class ImportedCamera:
    """A camera ready for Blender: `blender_camera` keyword arguments and its files
    (``image_path`` None: a camera without an image, as a turntable without photos)."""

    name: str
    settings: dict
    image_path: Path | None
    mask_path: Path | None = None


# --- finding images ---------------------------------------------------------------


def image_search_dirs(camera_file, images_dir=None) -> list[Path]:
    """Where a camera file's images are looked for, in order.

    ``images_dir`` alone when given; else the camera file's folder and the ``images``
    folders in it and up to two levels above it (COLMAP's project/sparse/0 layout).
    """
    if images_dir is not None and str(images_dir) != "":
        return [Path(images_dir)]
    path = Path(camera_file)
    folder = path if path.is_dir() else path.parent
    return [folder] + [level / "images" for level in (folder, *folder.parents[:2])]


def find_image(reference: str, search_dirs, by_name: bool = True) -> Path | None:
    """The file a camera file's image reference names (``..`` folded away), or None.

    Tries each folder with the reference as a relative path, then (``by_name``) with
    its file name alone; a reference without a known image extension also tries each
    extension.
    """
    found = _find_image(reference, search_dirs, by_name)
    return Path(os.path.normpath(found)) if found is not None else None


def _find_image(reference: str, search_dirs, by_name: bool) -> Path | None:
    ref = PurePosixPath(reference.replace("\\", "/"))
    names = [ref, PurePosixPath(ref.name)] if by_name and len(ref.parts) > 1 else [ref]
    with_suffix = ref.suffix.lower() in IMAGE_SUFFIXES
    for folder in search_dirs:
        for name in names:
            candidate = Path(folder) / name
            if with_suffix and candidate.is_file():
                return candidate
            if not with_suffix:
                for suffix in IMAGE_SUFFIXES:
                    for variant in (suffix, suffix.upper()):
                        found = candidate.with_name(candidate.name + variant)
                        if found.is_file():
                            return found
                if candidate.is_file():
                    return candidate
    return None


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``obj_r5`` before ``obj_r10`` (ALOI's
    turntable photos are named by angle like that)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p)


def image_size(path) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG file from its header, without decoding it."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            return _jpeg_size(f, path)
    raise CameraFileError(path, "cannot read the size of this image (only PNG and JPEG "
                          "headers are read): give the image size (w, h) in the camera file, "
                          "or convert the images to PNG")


def _jpeg_size(f, path) -> tuple[int, int]:
    """Walk a JPEG's segments to the frame header (SOF0..SOF15 but DHT, JPG, DAC)."""
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise CameraFileError(path, "broken JPEG: no frame header before the image data")
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:
            continue
        (length,) = struct.unpack(">H", f.read(2))
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">xHH", f.read(5))
            return width, height
        f.seek(length - 2, 1)


# --- geometry helpers -------------------------------------------------------------


def quaternion_to_rotation(qw, qx, qy, qz) -> np.ndarray:
    """(3, 3) rotation of a Hamilton quaternion (w first, normalised here)."""
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not (np.isfinite(norm) and norm > 1e-12):
        raise ValueError(f"the quaternion {q.tolist()} has no length")
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotation_to_quaternion(rotation) -> np.ndarray:
    """Unit Hamilton quaternion (4,) [w, x, y, z], w >= 0, of a (3, 3) rotation."""
    r = np.asarray(rotation, dtype=np.float64)
    # The symmetric 4x4 whose largest eigenvector is the quaternion (Bar-Itzhack).
    k = np.array([
        [r[0, 0] + r[1, 1] + r[2, 2], r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]],
        [r[2, 1] - r[1, 2], r[0, 0] - r[1, 1] - r[2, 2], r[0, 1] + r[1, 0], r[0, 2] + r[2, 0]],
        [r[0, 2] - r[2, 0], r[0, 1] + r[1, 0], r[1, 1] - r[0, 0] - r[2, 2], r[1, 2] + r[2, 1]],
        [r[1, 0] - r[0, 1], r[0, 2] + r[2, 0], r[1, 2] + r[2, 1], r[2, 2] - r[0, 0] - r[1, 1]],
    ]) / 3.0
    q = np.linalg.eigh(k)[1][:, -1]
    return q if q[0] >= 0 else -q


def pose_matrix(rotation, translation) -> np.ndarray:
    """(4, 4) world -> camera pose [R t; 0 1]."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = translation
    return pose


def intrinsics_matrix(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def distortion_shift_px(k, width, height, k1=0.0, k2=0.0, k3=0.0, k4=0.0, p1=0.0,
                        p2=0.0) -> float:
    """The largest pixel displacement OpenCV's radial-tangential distortion causes
    along the border of a ``width`` x ``height`` frame with intrinsics ``k`` (3, 3).

    x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6 + k4 r^8) + 2 p1 x y + p2 (r^2 + 2 x^2), and
    likewise for y; the border holds the largest radii of the frame.
    """
    t = np.linspace(0.0, 1.0, 33)
    u = np.concatenate([t * width, t * width, np.zeros_like(t), np.full_like(t, width)])
    v = np.concatenate([np.zeros_like(t), np.full_like(t, height), t * height, t * height])
    x, y = (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]
    r2 = x * x + y * y
    radial = k1 * r2 + k2 * r2**2 + k3 * r2**3 + k4 * r2**4
    dx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    dy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return float(np.max(np.hypot(dx * k[0, 0], dy * k[1, 1])))


def _check_distortion(model: str, k, width, height, **coefficients) -> None:
    shift = distortion_shift_px(k, width, height, **coefficients)
    if shift > DISTORTION_TOLERANCE_PX:
        values = ", ".join(f"{n}={v:g}" for n, v in coefficients.items() if v)
        raise ValueError(
            f"the {model} camera model has lens distortion ({values}) that moves pixels by up "
            f"to {shift:.3g} px, and this importer does not undistort images: undistort them "
            "first (COLMAP: `colmap image_undistorter`, which writes undistorted images and a "
            "PINHOLE model) and import the undistorted model")


def colmap_intrinsics(model: str, width: int, height: int, params) -> np.ndarray:
    """K (3, 3) of a COLMAP camera; ValueError for an unsupported model, a wrong number
    of parameters, or distortion that moves a pixel by more than 0.01 px."""
    if model not in COLMAP_MODELS:
        known = ", ".join(COLMAP_MODELS)
        raise ValueError(f"the camera model {model} is not supported (supported: {known}); "
                         "undistort the images with COLMAP to get a PINHOLE model")
    names = COLMAP_MODELS[model][1]
    if len(params) != len(names):
        raise ValueError(f"the {model} model takes {len(names)} parameters "
                         f"({' '.join(names)}), the line has {len(params)}")
    p = dict(zip(names, (float(x) for x in params), strict=True))
    fx, fy = p.get("fx", p.get("f")), p.get("fy", p.get("f"))
    if not (fx > 0 and fy > 0 and width > 0 and height > 0):
        raise ValueError(f"the focal length ({fx}, {fy}) and the image size ({width}x{height}) "
                         "must be positive")
    k = intrinsics_matrix(fx, fy, p["cx"], p["cy"])
    distortion = {n: p[n] for n in ("k1", "k2", "p1", "p2") if n in p}
    _check_distortion(model, k, width, height, **distortion)
    return k


def camera_names(references) -> list[str]:
    """Camera names for image references: the file name without its extension, or the
    whole relative path without it where two images share a file name."""
    refs = [PurePosixPath(r.replace("\\", "/")) for r in references]
    stems = [r.stem if r.suffix.lower() in IMAGE_SUFFIXES else r.name for r in refs]
    counts = {s: stems.count(s) for s in stems}
    names = []
    for ref, stem in zip(refs, stems, strict=True):
        if counts[stem] == 1:
            names.append(stem)
        else:
            parts = [p for p in ref.parts[:-1] if p not in (".", "")]
            names.append("/".join([*parts, stem]))
    return names


def _records(rows) -> list[CameraRecord]:
    """Records from (image reference, CameraMatrices, mask reference) rows, named."""
    names = camera_names([row[0] for row in rows])
    return [CameraRecord(name, ref, cam, mask)
            for name, (ref, cam, mask) in zip(names, rows, strict=True)]


# --- COLMAP -----------------------------------------------------------------------


def _text_lines(path: Path):
    """(line number, stripped line) of a text file, comments and blank lines included."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CameraFileError(path, f"not a text file ({exc.reason})") from exc
    return list(enumerate((line.strip() for line in text.splitlines()), start=1))


def _floats(tokens, path, line, what: str) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError as exc:
        raise CameraFileError(path, f"{what}: {exc}", f"line {line}") from exc
    if not all(math.isfinite(v) for v in values):
        raise CameraFileError(path, f"{what}: NaN or infinite value", f"line {line}")
    return values


def _ints(tokens, path, line, what: str) -> list[int]:
    try:
        return [int(t) for t in tokens]
    except ValueError as exc:
        raise CameraFileError(path, f"{what}: {exc}", f"line {line}") from exc


def read_colmap_cameras_text(path) -> dict[int, tuple[np.ndarray, int, int]]:
    """cameras.txt -> {camera id: (K (3, 3), width, height)}."""
    path = Path(path)
    cameras = {}
    for line, text in _text_lines(path):
        if not text or text.startswith("#"):
            continue
        tokens = text.split()
        if len(tokens) < 4:
            raise CameraFileError(path, "expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...",
                                  f"line {line}")
        cam_id, width, height = _ints([tokens[0], *tokens[2:4]], path, line,
                                      "camera id, width and height must be integers")
        params = _floats(tokens[4:], path, line, "camera parameters must be numbers")
        try:
            cameras[cam_id] = (colmap_intrinsics(tokens[1], width, height, params), width,
                               height)
        except ValueError as exc:
            raise CameraFileError(path, f"camera {cam_id}: {exc}", f"line {line}") from exc
    return cameras


def read_colmap_images_text(path) -> list[tuple[str, np.ndarray, int, int]]:
    """images.txt -> [(image name, pose (4, 4), camera id, line)], in file order.

    Each image takes two lines: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` and
    its 2D points (ignored, maybe empty).
    """
    path = Path(path)
    lines = _text_lines(path)
    images, i = [], 0
    while i < len(lines):
        line, text = lines[i]
        i += 1
        if not text or text.startswith("#"):
            continue
        tokens = text.split()
        if len(tokens) < 10:
            raise CameraFileError(path, "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME "
                                  f"(10 fields), found {len(tokens)}", f"line {line}")
        _ints([tokens[0]], path, line, "the image id must be an integer")
        (cam_id,) = _ints([tokens[8]], path, line, "the camera id must be an integer")
        q = _floats(tokens[1:5], path, line, "the quaternion must be numbers")
        t = _floats(tokens[5:8], path, line, "the translation must be numbers")
        try:
            pose = pose_matrix(quaternion_to_rotation(*q), t)
        except ValueError as exc:
            raise CameraFileError(path, str(exc), f"line {line}") from exc
        images.append((" ".join(tokens[9:]), pose, cam_id, line))
        i += 1  # the points line
    return images


def _unpack(fmt: str, data: bytes, offset: int, path, what: str):
    size = struct.calcsize(fmt)
    if offset + size > len(data):
        raise CameraFileError(path, f"the file ends inside {what} ({len(data)} bytes)",
                              f"byte {offset}")
    return struct.unpack_from(fmt, data, offset), offset + size


def read_colmap_cameras_binary(path) -> dict[int, tuple[np.ndarray, int, int]]:
    """cameras.bin -> {camera id: (K (3, 3), width, height)} (little-endian, COLMAP's
    uint64 count, then per camera int32 id, int32 model, uint64 width, height, doubles)."""
    path = Path(path)
    data = path.read_bytes()
    (count,), offset = _unpack("<Q", data, 0, path, "the camera count")
    cameras = {}
    for index in range(count):
        start = offset
        (cam_id, model_id, width, height), offset = _unpack(
            "<iiQQ", data, offset, path, f"camera {index}")
        model = _COLMAP_NAMES_BY_ID.get(model_id, COLMAP_OTHER_MODELS.get(model_id))
        if model is None:
            raise CameraFileError(path, f"camera {cam_id} has the unknown model id {model_id}",
                                  f"byte {start}")
        if model not in COLMAP_MODELS:
            params = ()
        else:
            n = len(COLMAP_MODELS[model][1])
            params, offset = _unpack(f"<{n}d", data, offset, path, f"camera {cam_id}")
        try:
            cameras[cam_id] = (colmap_intrinsics(model, width, height, params), width, height)
        except ValueError as exc:
            raise CameraFileError(path, f"camera {cam_id}: {exc}", f"byte {start}") from exc
    return cameras


def read_colmap_images_binary(path) -> list[tuple[str, np.ndarray, int, int]]:
    """images.bin -> [(image name, pose (4, 4), camera id, byte offset)], in file order."""
    path = Path(path)
    data = path.read_bytes()
    (count,), offset = _unpack("<Q", data, 0, path, "the image count")
    images = []
    for index in range(count):
        start = offset
        values, offset = _unpack("<i7di", data, offset, path, f"image {index}")
        end = data.find(b"\0", offset)
        if end < 0:
            raise CameraFileError(path, f"image {values[0]}: its name has no terminating "
                                  "zero byte", f"byte {offset}")
        name = data[offset:end].decode("utf-8", errors="replace")
        (points,), offset = _unpack("<Q", data, end + 1, path, f"image {values[0]}")
        offset += 24 * points  # x, y, point3D id per 2D point
        if offset > len(data):
            raise CameraFileError(path, f"the file ends inside image {values[0]}'s points",
                                  f"byte {start}")
        try:
            pose = pose_matrix(quaternion_to_rotation(*values[1:5]), values[5:8])
        except ValueError as exc:
            raise CameraFileError(path, str(exc), f"byte {start}") from exc
        images.append((name, pose, values[8], start))
    return images


def read_colmap(folder) -> list[CameraRecord]:
    """A COLMAP sparse model folder (text when cameras.txt is there, else binary),
    its images sorted by name."""
    folder = Path(folder)
    if (folder / "cameras.txt").is_file():
        cameras_path, images_path = folder / "cameras.txt", folder / "images.txt"
        cameras = read_colmap_cameras_text(cameras_path)
        images = read_colmap_images_text(images_path) if images_path.is_file() else None
        where = "line"
    elif (folder / "cameras.bin").is_file():
        cameras_path, images_path = folder / "cameras.bin", folder / "images.bin"
        cameras = read_colmap_cameras_binary(cameras_path)
        images = read_colmap_images_binary(images_path) if images_path.is_file() else None
        where = "byte"
    else:
        raise CameraFileError(folder, "no COLMAP model here: expected cameras.txt and "
                              "images.txt, or cameras.bin and images.bin")
    if images is None:
        raise CameraFileError(images_path, "missing: a COLMAP model needs its images file "
                              "beside the cameras file")
    rows = []
    for name, pose, cam_id, position in sorted(images, key=lambda row: row[0]):
        if cam_id not in cameras:
            raise CameraFileError(images_path, f"image {name} uses camera {cam_id}, which "
                                  f"{cameras_path.name} does not define", f"{where} {position}")
        k, width, height = cameras[cam_id]
        rows.append((name, CameraMatrices(k, pose, width, height, False), None))
    if not rows:
        raise CameraFileError(images_path, "the model has no images")
    return _records(rows)


# --- NeRF / instant-ngp / nerfstudio transforms.json ------------------------------

_TRANSFORMS_INTRINSICS = ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w",
                          "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_model")
_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")

SizeOf = Callable[[str], tuple[int, int]]


def read_transforms(path, image_size_of: SizeOf) -> list[CameraRecord]:
    """A transforms.json, its frames in file order.

    image_size_of(file_path) gives (width, height) for frames whose intrinsics lack
    ``w`` and ``h`` (NeRF-synthetic files give only ``camera_angle_x``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CameraFileError(path, f"not valid JSON: {exc.msg}",
                              f"line {exc.lineno}, column {exc.colno}") from exc
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise CameraFileError(path, 'expected a JSON object with a non-empty list "frames"')
    top = {k: data[k] for k in _TRANSFORMS_INTRINSICS if k in data}
    rows = []
    for i, frame in enumerate(frames):
        label = frame.get("file_path") if isinstance(frame, dict) else None
        try:
            rows.append(_transforms_frame(frame, top, image_size_of))
        except (ValueError, TypeError) as exc:
            where = f"frame {i}" + (f" ({label})" if isinstance(label, str) else "")
            raise CameraFileError(path, str(exc), where) from exc
    return _records(rows)


def _transforms_frame(frame, top: dict, image_size_of: SizeOf):
    """(file_path, CameraMatrices, mask_path) of one frame; ValueError says what is wrong."""
    if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
        raise ValueError('a frame must be an object with a "file_path" string')
    if "transform_matrix" not in frame:
        raise ValueError('the frame has no "transform_matrix"')
    ref = frame["file_path"]
    p = {**top, **{k: frame[k] for k in _TRANSFORMS_INTRINSICS if k in frame}}
    model = p.get("camera_model", "OPENCV")
    if model not in _PINHOLE_MODELS:
        raise ValueError(f"the camera model {model} is not supported (supported: "
                         f"{', '.join(_PINHOLE_MODELS)} with negligible distortion)")
    width, height = (int(p["w"]), int(p["h"])) if "w" in p and "h" in p else image_size_of(ref)
    fx = float(p["fl_x"]) if "fl_x" in p else _focal(p.get("camera_angle_x"), width)
    fy = float(p["fl_y"]) if "fl_y" in p else _focal(p.get("camera_angle_y"), height)
    if fx is None and fy is None:
        raise ValueError("no focal length: give fl_x (pixels) or camera_angle_x (radians)")
    fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
    if not (fx > 0 and fy > 0 and width > 0 and height > 0):
        raise ValueError(f"the focal length ({fx}, {fy}) and the image size ({width}x{height}) "
                         "must be positive")
    k = intrinsics_matrix(fx, fy, float(p.get("cx", width / 2.0)), float(p.get("cy", height / 2.0)))
    coefficients = {n: float(p[n]) for n in ("k1", "k2", "k3", "k4", "p1", "p2") if n in p}
    _check_distortion(model, k, width, height, **coefficients)
    matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise ValueError(f"transform_matrix must be 4x4 (or 3x4), got shape {matrix.shape}")
    mask = frame.get("mask_path")
    if mask is not None and not isinstance(mask, str):
        raise ValueError('"mask_path" must be a string')
    return ref, CameraMatrices(k, world_to_camera(matrix), width, height, False), mask


def _focal(angle, size: int) -> float | None:
    """Focal length in pixels for a field of view ``angle`` (radians) across ``size`` px."""
    if angle is None:
        return None
    angle = float(angle)
    if not 0 < angle < math.pi:
        raise ValueError(f"the field of view {angle} must be between 0 and pi radians")
    return 0.5 * size / math.tan(angle / 2.0)


# --- Middlebury multi-view ----------------------------------------------------------


def read_middlebury(path, image_size_of: SizeOf) -> list[CameraRecord]:
    """A Middlebury ``*_par.txt``: the count, then ``name k11..k33 r11..r33 t1 t2 t3``
    per line (projection K [R | t]); the image sizes come from ``image_size_of``."""
    path = Path(path)
    lines = [(n, t) for n, t in _text_lines(path) if t and not t.startswith("#")]
    if not lines:
        raise CameraFileError(path, "the file is empty")
    first_line, first = lines[0]
    (count,) = _ints(first.split()[:1], path, first_line,
                     "the first line must be the number of cameras")
    if len(first.split()) != 1:
        raise CameraFileError(path, "the first line must hold only the number of cameras",
                              f"line {first_line}")
    if count != len(lines) - 1:
        raise CameraFileError(path, f"the first line says {count} cameras but {len(lines) - 1} "
                              "camera lines follow", f"line {first_line}")
    rows = []
    for line, text in lines[1:]:
        tokens = text.split()
        if len(tokens) != 22:
            raise CameraFileError(path, "expected an image name and 21 numbers (K, R, t), "
                                  f"found {len(tokens)} fields", f"line {line}")
        values = _floats(tokens[1:], path, line, "K, R and t must be numbers")
        k = np.array(values[:9]).reshape(3, 3)
        pose = pose_matrix(np.array(values[9:18]).reshape(3, 3), values[18:21])
        try:
            _check_pinhole(k)
            camera_to_world(pose)  # the pose is a proper rotation
            width, height = image_size_of(tokens[0])
        except ValueError as exc:
            raise CameraFileError(path, str(exc), f"line {line}") from exc
        rows.append((tokens[0], CameraMatrices(k / k[2, 2], pose, width, height, False), None))
    return _records(rows)


def _check_pinhole(k: np.ndarray) -> None:
    if k[2, 2] <= 0 or abs(k[0, 1]) > 1e-9 * abs(k[0, 0]) or k[1, 0] or k[2, 0] or k[2, 1]:
        raise ValueError(f"K = {k.tolist()} is not [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]: "
                         "Blender cameras have no skew")
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise ValueError(f"K's focal lengths ({k[0, 0]}, {k[1, 1]}) must be positive")


# --- writers ------------------------------------------------------------------------


def _check_writable(record: CameraRecord) -> None:
    if record.camera.orthographic:
        raise ValueError(f"camera {record.name} is orthographic: camera files hold perspective "
                         "cameras only")


def write_transforms(path, records) -> None:
    """Write cameras as a nerfstudio/instant-ngp transforms.json (pinhole, ``fl_x`` ...,
    ``camera_angle_x`` too for NeRF loaders; shared intrinsics at the top level)."""
    records = list(records)
    frames, intrinsics = [], []
    for record in records:
        _check_writable(record)
        cam, k = record.camera, record.camera.intrinsics
        intrinsics.append({
            "w": cam.width, "h": cam.height, "fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]),
            "cx": float(k[0, 2]), "cy": float(k[1, 2]),
            "camera_angle_x": 2.0 * math.atan(cam.width / (2.0 * k[0, 0])),
            "camera_angle_y": 2.0 * math.atan(cam.height / (2.0 * k[1, 1])),
        })
        frame = {"file_path": record.image,
                 "transform_matrix": camera_to_world(cam.world_to_camera).tolist()}
        if record.mask is not None:
            frame["mask_path"] = record.mask
        frames.append(frame)
    if not frames:
        raise ValueError("there are no cameras to write")
    data = {"camera_model": "OPENCV"}
    if all(i == intrinsics[0] for i in intrinsics):
        data.update(intrinsics[0])
    else:
        frames = [{**i, **f} for i, f in zip(intrinsics, frames, strict=True)]
    data["frames"] = frames
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_colmap_text(folder, records) -> None:
    """Write cameras as a COLMAP text model (cameras.txt, images.txt, an empty
    points3D.txt) into ``folder``; one PINHOLE camera per distinct intrinsics."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    camera_ids: dict[tuple, int] = {}
    camera_lines, image_lines = [], []
    for image_id, record in enumerate(records, start=1):
        _check_writable(record)
        cam, k = record.camera, record.camera.intrinsics
        key = (cam.width, cam.height, k[0, 0], k[1, 1], k[0, 2], k[1, 2])
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            numbers = " ".join(repr(float(x)) for x in key[2:])
            camera_lines.append(f"{camera_ids[key]} PINHOLE {cam.width} {cam.height} {numbers}")
        pose = cam.world_to_camera
        camera_to_world(pose)  # a proper rotation, or ValueError
        values = [*rotation_to_quaternion(pose[:3, :3]), *pose[:3, 3]]
        numbers = " ".join(repr(float(x)) for x in values)
        image_lines += [f"{image_id} {numbers} {camera_ids[key]} {record.image}", ""]
    if not image_lines:
        raise ValueError("there are no cameras to write")
    header = "# Written by softras-blender.\n"
    (folder / "cameras.txt").write_text(
        header + "# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        + "\n".join(camera_lines) + "\n", encoding="utf-8")
    (folder / "images.txt").write_text(
        header + "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
        "# POINTS2D[] as (X, Y, POINT3D_ID)\n" + "\n".join(image_lines) + "\n",
        encoding="utf-8")
    (folder / "points3D.txt").write_text(
        header + "# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n",
        encoding="utf-8")


# --- one entry point for importers --------------------------------------------------

COLMAP_FILE_NAMES = ("cameras.txt", "images.txt", "points3d.txt", "cameras.bin", "images.bin",
                     "points3d.bin")


def read_camera_file(path, images_dir=None) -> list[CameraRecord]:
    """Any supported camera file, told apart by its name: a folder (a COLMAP model, or
    one holding transforms.json), ``*.json``, a COLMAP file, or another ``*.txt``
    (Middlebury). ``images_dir``: where the images are when not beside the file."""
    path = Path(path)
    if not path.exists():
        raise CameraFileError(path, "no such file or folder")
    dirs = image_search_dirs(path, images_dir)

    def size_of(reference: str) -> tuple[int, int]:
        found = find_image(reference, dirs)
        if found is None:
            raise ValueError(f"the image {reference} is not in {_folders(dirs)}, and the file "
                             "does not give the image size")
        return image_size(found)

    if path.is_dir():
        if (path / "transforms.json").is_file():
            return read_transforms(path / "transforms.json", size_of)
        return read_colmap(path)
    name = path.name.lower()
    if name.endswith(".json"):
        return read_transforms(path, size_of)
    if name in COLMAP_FILE_NAMES:
        return read_colmap(path.parent)
    if name.endswith(".txt"):
        return read_middlebury(path, size_of)
    raise CameraFileError(path, "not a camera file this importer reads: choose a COLMAP model "
                          "(its folder, cameras.txt or cameras.bin), a transforms.json, or a "
                          "Middlebury *_par.txt")


def _folders(dirs) -> str:
    return ", ".join(str(d) for d in dirs)


def load_camera_file(path, images_dir=None) -> list[ImportedCamera]:
    """Read a camera file, find every image (and mask), and convert each camera to
    Blender settings that share one scene resolution and pixel aspect.

    Raises CameraFileError when the file does not parse, an image or mask is missing
    (all missing ones listed), or the cameras cannot share one Blender scene.
    """
    records = read_camera_file(path, images_dir)
    dirs = image_search_dirs(path, images_dir)
    images = [find_image(r.image, dirs) for r in records]
    # A mask path is relative to the camera file (nerfstudio), and never matched by its
    # file name alone, which would find the photo of the same name.
    mask_dirs = image_search_dirs(path)[:1]
    masks = [find_image(r.mask, mask_dirs, by_name=False) if r.mask else None
             for r in records]
    missing = [r.image for r, found in zip(records, images, strict=True) if found is None]
    missing += [f"{r.mask} (mask)" for r, found in zip(records, masks, strict=True)
                if r.mask and found is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise CameraFileError(path, f"{len(missing)} image(s) not found in {_folders(dirs)}: "
                              f"{shown}; put the images beside the camera file or choose "
                              "their folder")
    try:
        settings = blender_scene_settings([r.camera for r in records],
                                          names=[r.name for r in records])
    except ValueError as exc:
        raise CameraFileError(path, str(exc)) from exc
    return [ImportedCamera(r.name, s, image, mask)
            for r, s, image, mask in zip(records, settings, images, masks, strict=True)]
