"""Camera files (backend.core.camera_files) and the inverse camera conversion, bpy-free.

Every imported camera must reproduce its file's projection K [R | t] within 0.01 px
once converted to Blender settings and back through `blender_camera`.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import TEMPLE_DIR
from PIL import Image

from backend.core import camera_files as cf
from backend.core.camera import (
    CameraMatrices,
    blender_camera,
    blender_scene_settings,
    blender_settings,
    field_of_view_to_lens,
    look_at,
    orbit_cameras,
    turntable_count,
    world_to_camera,
)

TEMPLE = TEMPLE_DIR / "templeSR_par.txt"
TOLERANCE_PX = 0.01
RNG = np.random.default_rng(7)


def project(k, pose, points) -> np.ndarray:
    """Pixel coordinates (N, 2) of world points (N, 3) through K (3, 3) [R | t] (4, 4)."""
    cam = np.asarray(points) @ pose[:3, :3].T + pose[:3, 3]
    uvw = cam @ np.asarray(k).T
    return uvw[:, :2] / uvw[:, 2:]


def points_in_view(cam: CameraMatrices, count=200) -> np.ndarray:
    """World points (count, 3) spread over the camera's frame at depths 0.5 to 20."""
    u = RNG.uniform(0, cam.width, count)
    v = RNG.uniform(0, cam.height, count)
    z = RNG.uniform(0.5, 20.0, count)
    k = cam.intrinsics
    xyz = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], axis=1)
    pose = cam.world_to_camera
    return (xyz - pose[:3, 3]) @ pose[:3, :3]  # camera -> world: R^T (x - t)


def assert_blender_reproduces(cam: CameraMatrices, settings: dict | None = None) -> float:
    """Project points with the file's K [R | t] and with blender_camera(settings)."""
    settings = blender_settings(cam) if settings is None else settings
    back = blender_camera(**settings)
    assert (back.width, back.height) == (cam.width, cam.height)
    points = points_in_view(cam)
    error = np.abs(project(cam.intrinsics, cam.world_to_camera, points)
                   - project(back.intrinsics, back.world_to_camera, points)).max()
    assert error < TOLERANCE_PX
    return error


def random_pose() -> np.ndarray:
    eye = RNG.normal(size=3) * 4.0
    return world_to_camera(look_at(eye, RNG.normal(size=3) * 0.3))


def save_png(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (40, 40, 40)).save(path)
    return path


# --- the inverse conversion -------------------------------------------------------------


@pytest.mark.parametrize("fx, fy, cx, cy, width, height", [
    (500.0, 500.0, 320.0, 240.0, 640, 480),       # centred, square pixels
    (1520.4, 1525.9, 302.32, 246.87, 640, 480),   # the temple: fy > fx, off-centre
    (800.0, 640.0, 250.0, 400.0, 480, 720),       # portrait, fx > fy
    (300.0, 900.0, 100.0, 90.0, 200, 150),        # strong pixel aspect: vertical fit
    (1000.0, 1000.0, 900.0, -50.0, 800, 600),     # principal point outside the frame
])
def test_blender_settings_reproduce_the_projection(fx, fy, cx, cy, width, height):
    cam = CameraMatrices(cf.intrinsics_matrix(fx, fy, cx, cy), random_pose(), width, height,
                         False)
    assert_blender_reproduces(cam)
    back = blender_camera(**blender_settings(cam))
    np.testing.assert_allclose(back.intrinsics, cam.intrinsics, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(back.world_to_camera, cam.world_to_camera, atol=1e-12)


def test_pixel_aspect_values_are_both_at_least_one():
    for fx, fy in ((500.0, 700.0), (700.0, 500.0)):
        cam = CameraMatrices(cf.intrinsics_matrix(fx, fy, 10, 10), np.eye(4), 20, 20, False)
        s = blender_settings(cam)
        assert min(s["pixel_aspect_x"], s["pixel_aspect_y"]) == 1.0
        assert s["pixel_aspect_x"] / s["pixel_aspect_y"] == pytest.approx(fy / fx)


def test_sensor_fit_is_vertical_when_the_displayed_frame_is_taller_than_wide():
    cam = CameraMatrices(cf.intrinsics_matrix(500, 500, 100, 200), np.eye(4), 200, 400, False)
    assert blender_settings(cam)["sensor_fit"] == "VERTICAL"
    wide = CameraMatrices(cf.intrinsics_matrix(500, 500, 200, 100), np.eye(4), 400, 200, False)
    assert blender_settings(wide)["sensor_fit"] == "HORIZONTAL"


def test_orthographic_camera_round_trips():
    cam = blender_camera(matrix_world=look_at((3, -2, 1), (0, 0, 0)), resolution_x=160,
                         resolution_y=90, camera_type="ORTHO", ortho_scale=2.5, shift_x=0.1,
                         pixel_aspect_y=1.5)
    back = blender_camera(**blender_settings(cam))
    assert back.orthographic
    np.testing.assert_allclose(back.intrinsics, cam.intrinsics, atol=1e-9)


@pytest.mark.parametrize("fx, fy, width, reason", [
    (500.0, 500.0, 3, "4 to 65536 pixels"),
    (1.0, 300.0, 64, "pixel aspect goes up to 200"),
    (1.0, 1.0, 64, "lenses start at 1 mm"),
])
def test_settings_blender_cannot_hold_are_refused(fx, fy, width, reason):
    cam = CameraMatrices(cf.intrinsics_matrix(fx, fy, 2, 2), np.eye(4), width, 48, False)
    with pytest.raises(ValueError, match=reason):
        blender_settings(cam)


def test_a_reflection_is_refused():
    pose = np.diag([1.0, 1.0, -1.0, 1.0])
    cam = CameraMatrices(cf.intrinsics_matrix(500, 500, 10, 10), pose, 20, 20, False)
    with pytest.raises(ValueError, match="reflection"):
        blender_settings(cam)


def test_scene_settings_refuse_mixed_sizes_and_name_the_camera():
    k = cf.intrinsics_matrix(500, 500, 10, 10)
    cams = [CameraMatrices(k, np.eye(4), 20, 20, False), CameraMatrices(k, np.eye(4), 40, 20,
                                                                       False)]
    with pytest.raises(ValueError, match="camera right is 40x20 pixels but camera left is 20x20"):
        blender_scene_settings(cams, names=["left", "right"])


def test_scene_settings_refuse_a_pixel_aspect_that_cannot_be_shared():
    a = CameraMatrices(cf.intrinsics_matrix(500, 500, 320, 240), np.eye(4), 640, 480, False)
    b = CameraMatrices(cf.intrinsics_matrix(500, 510, 320, 240), np.eye(4), 640, 480, False)
    with pytest.raises(ValueError, match="one pixel aspect"):
        blender_scene_settings([a, b])
    # A difference that moves no pixel by 0.01 px is shared silently and stays exact enough.
    c = CameraMatrices(cf.intrinsics_matrix(500, 500 * (1 + 1e-6), 320, 240), random_pose(),
                       640, 480, False)
    settings = blender_scene_settings([a, c])
    assert settings[1]["pixel_aspect_x"] == settings[0]["pixel_aspect_x"]
    assert_blender_reproduces(c, settings[1])


# --- COLMAP ---------------------------------------------------------------------------

COLMAP_CAMERAS = [  # (id, model, width, height, params)
    (1, "SIMPLE_PINHOLE", 640, 480, [520.0, 318.0, 241.5]),
    (2, "PINHOLE", 640, 480, [520.0, 530.0, 322.0, 236.0]),
    (3, "SIMPLE_RADIAL", 640, 480, [515.0, 320.0, 240.0, 0.0]),
    (4, "RADIAL", 640, 480, [515.0, 320.0, 240.0, 0.0, 0.0]),
    (5, "OPENCV", 640, 480, [515.0, 519.0, 321.0, 239.0, 1e-12, 0.0, 0.0, 0.0]),
]


def colmap_images(count=5, one_camera=False):
    """(image id, qvec, tvec, camera id, name) rows with random poses, using the cameras
    in turn (or only the first: one Blender scene can hold them all)."""
    rows = []
    for i in range(count):
        pose = random_pose()
        cam_id = 1 if one_camera else COLMAP_CAMERAS[i % len(COLMAP_CAMERAS)][0]
        rows.append((i + 1, cf.rotation_to_quaternion(pose[:3, :3]), pose[:3, 3], cam_id,
                     f"frame_{i:03d}.png"))
    return rows


def write_colmap_text_files(folder: Path, cameras=COLMAP_CAMERAS, images=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = colmap_images() if images is None else images
    cam_lines = ["# Camera list", *(f"{i} {m} {w} {h} " + " ".join(map(repr, p))
                                    for i, m, w, h, p in cameras)]
    img_lines = ["# Image list"]
    for image_id, q, t, cam_id, name in images:
        numbers = " ".join(repr(float(x)) for x in (*q, *t))
        img_lines += [f"{image_id} {numbers} {cam_id} {name}", "1.0 2.0 -1 3.0 4.0 7"]
    (folder / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    (folder / "images.txt").write_text("\n".join(img_lines) + "\n")
    return folder


def write_colmap_binary_files(folder: Path, cameras=COLMAP_CAMERAS, images=None,
                              model_ids=None) -> Path:
    """The binary model as COLMAP writes it (little-endian)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = colmap_images() if images is None else images
    data = struct.pack("<Q", len(cameras))
    for cam_id, model, width, height, params in cameras:
        model_id = (model_ids or {}).get(cam_id, cf.COLMAP_MODELS.get(model, (None,))[0])
        data += struct.pack("<iiQQ", cam_id, model_id, width, height)
        data += struct.pack(f"<{len(params)}d", *params)
    (folder / "cameras.bin").write_bytes(data)
    data = struct.pack("<Q", len(images))
    for image_id, q, t, cam_id, name in images:
        data += struct.pack("<i7di", image_id, *q, *t, cam_id) + name.encode() + b"\0"
        data += struct.pack("<Q", 2) + struct.pack("<ddqddq", 1.0, 2.0, -1, 3.0, 4.0, 7)
    (folder / "images.bin").write_bytes(data)
    return folder


def expected_colmap(images=None):
    images = colmap_images() if images is None else images
    by_id = {c[0]: c for c in COLMAP_CAMERAS}
    out = {}
    for _, q, t, cam_id, name in images:
        _, model, width, height, params = by_id[cam_id]
        k = cf.colmap_intrinsics(model, width, height, params)
        out[name] = (k, cf.pose_matrix(cf.quaternion_to_rotation(*q), t))
    return out


@pytest.mark.parametrize("writer", [write_colmap_text_files, write_colmap_binary_files])
def test_colmap_models_read_every_supported_model(tmp_path, writer):
    images = colmap_images()
    records = cf.read_colmap(writer(tmp_path / "sparse", images=images))
    expected = expected_colmap(images)
    assert [r.image for r in records] == sorted(expected)
    for record in records:
        k, pose = expected[record.image]
        np.testing.assert_allclose(record.camera.intrinsics, k)
        np.testing.assert_allclose(record.camera.world_to_camera, pose, atol=1e-12)
        assert record.name == Path(record.image).stem
        assert_blender_reproduces(record.camera)


def test_colmap_text_and_binary_agree(tmp_path):
    images = colmap_images()
    text = cf.read_colmap(write_colmap_text_files(tmp_path / "text", images=images))
    binary = cf.read_colmap(write_colmap_binary_files(tmp_path / "bin", images=images))
    for a, b in zip(text, binary, strict=True):
        np.testing.assert_array_equal(a.camera.intrinsics, b.camera.intrinsics)
        np.testing.assert_array_equal(a.camera.world_to_camera, b.camera.world_to_camera)


def test_colmap_parameter_meanings(tmp_path):
    k = cf.colmap_intrinsics("PINHOLE", 640, 480, [520.0, 530.0, 322.0, 236.0])
    np.testing.assert_array_equal(k, [[520, 0, 322], [0, 530, 236], [0, 0, 1]])
    k = cf.colmap_intrinsics("SIMPLE_RADIAL", 64, 48, [50.0, 31.0, 23.0, 0.0])
    np.testing.assert_array_equal(k, [[50, 0, 31], [0, 50, 23], [0, 0, 1]])


@pytest.mark.parametrize("model, params", [
    ("SIMPLE_RADIAL", [515.0, 320.0, 240.0, -0.05]),
    ("RADIAL", [515.0, 320.0, 240.0, 0.0, 0.01]),
    ("OPENCV", [515.0, 519.0, 321.0, 239.0, 0.0, 0.0, 0.001, 0.0]),
])
def test_lens_distortion_is_refused_with_the_model_named(model, params):
    with pytest.raises(ValueError, match=f"the {model} camera model has lens distortion.*"
                                         "image_undistorter"):
        cf.colmap_intrinsics(model, 640, 480, params)


def test_distortion_too_small_to_move_a_pixel_is_accepted():
    k = cf.intrinsics_matrix(500, 500, 320, 240)
    assert cf.distortion_shift_px(k, 640, 480, k1=1e-7) < TOLERANCE_PX
    assert cf.distortion_shift_px(k, 640, 480, k1=1e-3) > TOLERANCE_PX
    cf.colmap_intrinsics("SIMPLE_RADIAL", 640, 480, [500.0, 320.0, 240.0, 1e-7])


def test_unknown_colmap_model_in_text_names_the_model_and_line(tmp_path):
    cameras = [*COLMAP_CAMERAS[:2], (9, "FOV", 640, 480, [500.0, 320.0, 240.0, 0.1])]
    folder = write_colmap_text_files(tmp_path, cameras=cameras)
    with pytest.raises(cf.CameraFileError, match=r"cameras.txt, line 4: camera 9: the camera "
                                                 r"model FOV is not supported"):
        cf.read_colmap(folder)


def test_unsupported_colmap_model_in_binary_is_named(tmp_path):
    cameras = [(1, "OPENCV_FISHEYE", 640, 480, [500.0, 500.0, 320.0, 240.0, 0, 0, 0, 0])]
    folder = write_colmap_binary_files(tmp_path, cameras=cameras, model_ids={1: 5},
                                       images=[])
    with pytest.raises(cf.CameraFileError, match="model OPENCV_FISHEYE is not supported"):
        cf.read_colmap(folder)
    write_colmap_binary_files(tmp_path, cameras=cameras, model_ids={1: 99}, images=[])
    with pytest.raises(cf.CameraFileError, match="byte 8: camera 1 has the unknown model id 99"):
        cf.read_colmap(folder)


@pytest.mark.parametrize("line, content, reason", [
    (2, "2 PINHOLE 640 480 520.0 530.0 322.0", "the PINHOLE model takes 4 parameters"),
    (2, "2 PINHOLE 640 wide 520.0 530.0 322.0 1.0", "width and height must be integers"),
    (2, "2 PINHOLE 640 480 520.0 x 322.0 1.0", "parameters must be numbers"),
    (2, "2 PINHOLE", "expected CAMERA_ID MODEL WIDTH HEIGHT"),
])
def test_malformed_colmap_cameras_text_gives_line_and_reason(tmp_path, line, content, reason):
    (tmp_path / "cameras.txt").write_text(f"# header\n{content}\n")
    (tmp_path / "images.txt").write_text("")
    with pytest.raises(cf.CameraFileError, match=f"cameras.txt, line {line}: .*{reason}"):
        cf.read_colmap(tmp_path)


def test_malformed_colmap_images_text_gives_line_and_reason(tmp_path):
    write_colmap_text_files(tmp_path)
    lines = (tmp_path / "images.txt").read_text().splitlines()
    lines[3] = "2 1 0 0 0 0.5 0.5"  # the second image line (line 4), cut short
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(cf.CameraFileError, match="images.txt, line 4: expected IMAGE_ID"):
        cf.read_colmap(tmp_path)


def test_colmap_image_with_an_undefined_camera_is_refused(tmp_path):
    q, t = [1.0, 0, 0, 0], [0.0, 0, 0]
    write_colmap_text_files(tmp_path, images=[(1, q, t, 42, "a.png")])
    with pytest.raises(cf.CameraFileError, match="line 2: image a.png uses camera 42"):
        cf.read_colmap(tmp_path)


def test_truncated_colmap_binary_gives_the_byte_offset(tmp_path):
    write_colmap_binary_files(tmp_path)
    data = (tmp_path / "images.bin").read_bytes()
    (tmp_path / "images.bin").write_bytes(data[:100])
    with pytest.raises(cf.CameraFileError, match=r"images.bin, byte \d+: the file ends inside"):
        cf.read_colmap(tmp_path)


def test_colmap_images_with_empty_points_lines(tmp_path):
    cf.write_colmap_text(tmp_path, [cf.CameraRecord(
        "a", "a.png", CameraMatrices(cf.intrinsics_matrix(50, 50, 32, 24), random_pose(), 64,
                                     48, False))])
    assert (tmp_path / "images.txt").read_text().endswith("a.png\n\n")
    assert [r.name for r in cf.read_colmap(tmp_path)] == ["a"]


def test_quaternion_round_trip():
    for _ in range(20):
        rotation = random_pose()[:3, :3]
        q = cf.rotation_to_quaternion(rotation)
        assert q[0] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(cf.quaternion_to_rotation(*q), rotation, atol=1e-12)


# --- transforms.json ------------------------------------------------------------------


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def nerf_matrix(eye, target=(0, 0, 0)) -> list:
    return look_at(eye, target).tolist()


def test_nerf_synthetic_camera_angle_and_paths_without_extension(tmp_path):
    for name in ("r_0", "r_1"):
        save_png(tmp_path / "train" / f"{name}.png", 80, 60)
    path = write_json(tmp_path / "transforms_train.json", {
        "camera_angle_x": 0.6911112070083618,
        "frames": [{"file_path": "./train/r_0", "transform_matrix": nerf_matrix((4, 0, 1))},
                   {"file_path": "./train/r_1", "transform_matrix": nerf_matrix((0, 4, 1))}]})
    cams = cf.load_camera_file(path)
    assert [c.name for c in cams] == ["r_0", "r_1"]
    assert cams[0].image_path == tmp_path / "train" / "r_0.png"
    settings = cams[0].settings
    assert (settings["resolution_x"], settings["resolution_y"]) == (80, 60)
    back = blender_camera(**settings)
    assert back.intrinsics[0, 0] == pytest.approx(40.0 / math.tan(0.6911112070083618 / 2))
    np.testing.assert_allclose(back.intrinsics[:2, 2], [40.0, 30.0])
    # transform_matrix is matrix_world itself.
    np.testing.assert_allclose(settings["matrix_world"], nerf_matrix((4, 0, 1)), atol=1e-12)


def test_transforms_top_level_and_per_frame_intrinsics(tmp_path):
    path = write_json(tmp_path / "transforms.json", {
        "fl_x": 500.0, "fl_y": 520.0, "cx": 330.0, "cy": 230.0, "w": 640, "h": 480,
        "frames": [
            {"file_path": "images/a.jpg", "transform_matrix": nerf_matrix((3, 1, 1)),
             "mask_path": "masks/a.png"},
            {"file_path": "images/b.jpg", "transform_matrix": nerf_matrix((1, 3, 1)),
             "fl_x": 600.0, "fl_y": 624.0, "cx": 300.0},
        ]})
    records = cf.read_transforms(path, image_size_of=lambda ref: pytest.fail("size asked"))
    a, b = records
    np.testing.assert_array_equal(a.camera.intrinsics, [[500, 0, 330], [0, 520, 230], [0, 0, 1]])
    np.testing.assert_array_equal(b.camera.intrinsics, [[600, 0, 300], [0, 624, 230], [0, 0, 1]])
    assert a.mask == "masks/a.png" and b.mask is None
    for record in records:
        assert_blender_reproduces(record.camera)


def test_transforms_with_fisheye_or_distortion_is_refused(tmp_path):
    frame = {"file_path": "a.png", "transform_matrix": nerf_matrix((3, 1, 1))}
    base = {"fl_x": 500.0, "fl_y": 500.0, "w": 640, "h": 480, "frames": [frame]}
    path = write_json(tmp_path / "fish.json", {**base, "camera_model": "OPENCV_FISHEYE"})
    with pytest.raises(cf.CameraFileError, match=r"frame 0 \(a.png\): the camera model "
                                                 "OPENCV_FISHEYE is not supported"):
        cf.read_camera_file(path)
    path = write_json(tmp_path / "dist.json", {**base, "k1": -0.1})
    with pytest.raises(cf.CameraFileError, match="lens distortion"):
        cf.read_camera_file(path)


def test_invalid_json_gives_line(tmp_path):
    path = tmp_path / "transforms.json"
    path.write_text('{\n  "fl_x": 500,\n  "frames": [\n    {"file_path": "a.png",}\n  ]\n}\n')
    with pytest.raises(cf.CameraFileError, match="transforms.json, line 4, column 27: not valid"):
        cf.read_camera_file(path)


@pytest.mark.parametrize("frame, reason", [
    ({"file_path": "a.png"}, 'no "transform_matrix"'),
    ({"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}, "must be 4x4"),
    ({"transform_matrix": np.eye(4).tolist()}, '"file_path" string'),
])
def test_malformed_transforms_frame_is_named(tmp_path, frame, reason):
    good = {"file_path": "b.png", "transform_matrix": nerf_matrix((3, 1, 1))}
    path = write_json(tmp_path / "transforms.json",
                      {"fl_x": 500.0, "w": 64, "h": 48, "frames": [good, frame]})
    with pytest.raises(cf.CameraFileError, match=f"frame 1.*{reason}"):
        cf.read_camera_file(path)


def test_transforms_without_a_focal_length_is_refused(tmp_path):
    path = write_json(tmp_path / "t.json", {"w": 64, "h": 48, "frames": [
        {"file_path": "a.png", "transform_matrix": nerf_matrix((3, 1, 1))}]})
    with pytest.raises(cf.CameraFileError, match="no focal length"):
        cf.read_camera_file(path)


def test_same_file_names_in_two_folders_get_distinct_camera_names():
    assert cf.camera_names(["./train/r_0", "./test/r_0", "val/r_1.png"]) == [
        "train/r_0", "test/r_0", "r_1"]


# --- Middlebury -------------------------------------------------------------------------


def read_par(path: Path):
    rows = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
    return {r[0]: (np.array(r[1:10], float).reshape(3, 3),
                   cf.pose_matrix(np.array(r[10:19], float).reshape(3, 3),
                                  np.array(r[19:22], float))) for r in rows}


def test_temple_cameras_reproduce_the_file_projection():
    cams = cf.load_camera_file(TEMPLE)
    expected = read_par(TEMPLE)
    assert len(cams) == 16 and cams[0].name == "templeSR0001"
    # The object's bounding box (README.txt) sits inside every photo.
    box = np.array([[-0.073568, 0.021728, -0.012445], [0.028855, 0.181892, 0.062736]])
    corners = np.array([[box[i, 0], box[j, 1], box[l, 2]] for i in (0, 1) for j in (0, 1)
                        for l in (0, 1)])
    points = RNG.uniform(box[0] - 0.05, box[1] + 0.05, (500, 3))
    for cam in cams:
        k, pose = expected[cam.image_path.name]
        back = blender_camera(**cam.settings)
        assert (back.width, back.height) == (640, 480)
        error = np.abs(project(k, pose, points) - project(back.intrinsics, back.world_to_camera,
                                                          points)).max()
        assert error < TOLERANCE_PX
        uv = project(k, pose, corners)
        assert np.all((uv > 0) & (uv < [640, 480]))


def test_temple_pixel_aspect_and_shift():
    settings = cf.load_camera_file(TEMPLE)[0].settings
    assert settings["pixel_aspect_x"] == pytest.approx(1525.9 / 1520.4)
    assert settings["pixel_aspect_y"] == 1.0
    assert settings["shift_x"] == pytest.approx((320 - 302.32) / 640)


@pytest.mark.parametrize("lines, where, reason", [
    (["3", "a.png " + " ".join(["1"] * 21)], "line 1", "says 3 cameras but 1 camera lines"),
    (["1", "a.png 1 2 3"], "line 2", "expected an image name and 21 numbers"),
    (["1", "a.png " + " ".join(["1"] * 20) + " x"], "line 2", "must be numbers"),
    (["one"], "line 1", "number of cameras"),
    (["1", "a.png 500 0 32 0 500 24 0 0 1 " + " ".join(["1"] * 9) + " 0 0 0"], "line 2",
     "not orthonormal"),
    (["1", "a.png 500 3 32 0 500 24 0 0 1 1 0 0 0 1 0 0 0 1 0 0 0"], "line 2", "no skew"),
])
def test_malformed_middlebury_file_gives_line_and_reason(tmp_path, lines, where, reason):
    save_png(tmp_path / "a.png", 64, 48)
    path = tmp_path / "bad_par.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(cf.CameraFileError, match=f"bad_par.txt, {where}: .*{reason}"):
        cf.read_camera_file(path)


# --- writers: round trips ---------------------------------------------------------------


def temple_records():
    return cf.read_camera_file(TEMPLE)


def assert_same_records(a, b):
    assert [r.image for r in a] == [r.image for r in b]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose(rb.camera.intrinsics, ra.camera.intrinsics, rtol=1e-14)
        np.testing.assert_allclose(rb.camera.world_to_camera, ra.camera.world_to_camera,
                                   atol=1e-12)
        assert (rb.camera.width, rb.camera.height) == (ra.camera.width, ra.camera.height)


def test_transforms_writer_round_trips(tmp_path):
    records = temple_records()
    cf.write_transforms(tmp_path / "transforms.json", records)
    data = json.loads((tmp_path / "transforms.json").read_text())
    assert data["fl_x"] == 1520.4 and data["w"] == 640  # shared: at the top level
    back = cf.read_transforms(tmp_path / "transforms.json", image_size_of=None)
    assert_same_records(records, back)


def test_transforms_writer_keeps_per_frame_intrinsics_and_masks(tmp_path):
    a = cf.CameraRecord("a", "a.png", CameraMatrices(cf.intrinsics_matrix(50, 55, 30, 20),
                                                     random_pose(), 64, 48, False), "m/a.png")
    b = cf.CameraRecord("b", "b.png", CameraMatrices(cf.intrinsics_matrix(70, 70, 32, 24),
                                                     random_pose(), 64, 48, False))
    cf.write_transforms(tmp_path / "t.json", [a, b])
    back = cf.read_transforms(tmp_path / "t.json", image_size_of=None)
    assert_same_records([a, b], back)
    assert back[0].mask == "m/a.png"


def test_colmap_writer_round_trips_and_shares_cameras(tmp_path):
    records = temple_records()
    cf.write_colmap_text(tmp_path / "sparse", records)
    cameras = (tmp_path / "sparse" / "cameras.txt").read_text().splitlines()
    assert [line for line in cameras if not line.startswith("#")] == [
        "1 PINHOLE 640 480 1520.4 1525.9 302.32 246.87"]
    assert_same_records(records, cf.read_colmap(tmp_path / "sparse"))


def test_writers_refuse_orthographic_cameras(tmp_path):
    cam = blender_camera(matrix_world=np.eye(4), resolution_x=10, resolution_y=10,
                         camera_type="ORTHO")
    with pytest.raises(ValueError, match="orthographic"):
        cf.write_transforms(tmp_path / "t.json", [cf.CameraRecord("o", "o.png", cam)])


# --- finding images -----------------------------------------------------------------------


def test_colmap_images_are_found_in_the_project_images_folder(tmp_path):
    images = colmap_images(2, one_camera=True)
    write_colmap_text_files(tmp_path / "sparse" / "0", images=images)
    for *_, name in images:
        save_png(tmp_path / "images" / name, 640, 480)
    cams = cf.load_camera_file(tmp_path / "sparse" / "0" / "cameras.txt")
    assert [c.image_path for c in cams] == [tmp_path / "images" / n for *_, n in images]


def test_missing_images_are_all_listed(tmp_path):
    images = colmap_images(3)
    write_colmap_text_files(tmp_path, images=images)
    save_png(tmp_path / images[1][4], 640, 480)
    with pytest.raises(cf.CameraFileError, match="2 image.* not found in .*frame_000.png, "
                                                 "frame_002.png; put the images"):
        cf.load_camera_file(tmp_path)


def test_masks_are_found_like_images_and_missing_ones_listed(tmp_path):
    save_png(tmp_path / "images" / "a.png", 64, 48)
    save_png(tmp_path / "masks" / "a.png", 64, 48)
    frames = [{"file_path": "images/a.png", "mask_path": "masks/a.png",
               "transform_matrix": nerf_matrix((3, 1, 1))}]
    path = write_json(tmp_path / "transforms.json",
                      {"fl_x": 50.0, "w": 64, "h": 48, "frames": frames})
    assert cf.load_camera_file(path)[0].mask_path == tmp_path / "masks" / "a.png"
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(cf.CameraFileError, match=r"1 image.* not found .*masks/a.png \(mask\)"):
        cf.load_camera_file(path)


def test_images_folder_given_explicitly(tmp_path):
    images = colmap_images(2, one_camera=True)
    write_colmap_binary_files(tmp_path / "model", images=images)
    for *_, name in images:
        save_png(tmp_path / "elsewhere" / name, 640, 480)
    cams = cf.load_camera_file(tmp_path / "model", images_dir=tmp_path / "elsewhere")
    assert cams[0].image_path.parent == tmp_path / "elsewhere"


def test_mixed_image_sizes_in_the_file_are_refused(tmp_path):
    cameras = [(1, "PINHOLE", 640, 480, [500.0, 500.0, 320.0, 240.0]),
               (2, "PINHOLE", 320, 240, [250.0, 250.0, 160.0, 120.0])]
    images = [(1, [1.0, 0, 0, 0], [0.0, 0, 4], 1, "a.png"),
              (2, [1.0, 0, 0, 0], [0.0, 0, 4], 2, "b.png")]
    write_colmap_text_files(tmp_path, cameras=cameras, images=images)
    save_png(tmp_path / "a.png", 640, 480)
    save_png(tmp_path / "b.png", 320, 240)
    with pytest.raises(cf.CameraFileError, match="camera b is 320x240 pixels but camera a is "
                                                 "640x480: the images must all have one size"):
        cf.load_camera_file(tmp_path)


def test_image_size_reads_png_and_jpeg_headers(tmp_path):
    assert cf.image_size(save_png(tmp_path / "a.png", 37, 21)) == (37, 21)
    Image.new("RGB", (45, 17)).save(tmp_path / "b.jpg", quality=80)
    assert cf.image_size(tmp_path / "b.jpg") == (45, 17)
    (tmp_path / "c.exr").write_bytes(b"v/1\x01" + bytes(40))
    with pytest.raises(cf.CameraFileError, match="only PNG and JPEG"):
        cf.image_size(tmp_path / "c.exr")


def test_unknown_file_kind_is_refused(tmp_path):
    path = tmp_path / "cameras.xml"
    path.write_text("<cameras/>")
    with pytest.raises(cf.CameraFileError, match="not a camera file this importer reads"):
        cf.read_camera_file(path)


# --- turntables ---------------------------------------------------------------------------


def test_natural_order_puts_numbers_by_value():
    names = ["1_r10.png", "1_r5.png", "1_r0.png", "1_r355.png", "1_R20.png"]
    assert sorted(names, key=cf.natural_key) == ["1_r0.png", "1_r5.png", "1_r10.png",
                                                 "1_R20.png", "1_r355.png"]


def test_turntable_count_from_a_step():
    assert turntable_count(None, 5.0) == 72
    assert turntable_count(None, 7.0) == 51
    assert turntable_count(12, 5.0) == 12
    with pytest.raises(ValueError, match="number of views or the angle"):
        turntable_count(None, None)


def test_turntable_around_another_axis_and_clockwise():
    centre = np.array([0.5, -0.2, 1.0])
    mats = orbit_cameras(4, [0.0, 30.0], 3.0, target=centre, azimuth_offset_deg=0.0,
                         axis=(0, 1, 0), clockwise=True, step_deg=10.0)
    assert len(mats) == 8
    eyes = np.array([m[:3, 3] for m in mats]) - centre
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=1), 3.0)
    np.testing.assert_allclose(eyes[:4, 1], 0.0, atol=1e-12)  # first ring: in the XZ plane
    np.testing.assert_allclose(eyes[4:, 1], 3.0 * np.sin(np.radians(30)), atol=1e-12)
    # Axis Y: east is +Z... made perpendicular from +X, so the first camera is on +X.
    np.testing.assert_allclose(eyes[0], [3.0, 0.0, 0.0], atol=1e-12)
    # Clockwise seen from +Y: from +X towards +Z, 10 degrees a step.
    angle = np.degrees(np.arctan2(eyes[1, 0], eyes[1, 2]))
    assert angle == pytest.approx(80.0)
    for world in mats:  # every camera looks at the centre with +Y up in the image
        cam = blender_camera(matrix_world=world, resolution_x=64, resolution_y=48)
        np.testing.assert_allclose(project(cam.intrinsics, cam.world_to_camera, [centre]),
                                   [[32, 24]], atol=1e-9)
        np.testing.assert_allclose(world[:3, 1] @ [0, 1, 0] > 0, True)


def test_turntable_default_axis_turns_counter_clockwise_from_x():
    mats = orbit_cameras(4, [0.0], 2.0)
    np.testing.assert_allclose([m[:3, 3] for m in mats],
                               [[2, 0, 0], [0, 2, 0], [-2, 0, 0], [0, -2, 0]], atol=1e-12)


def test_field_of_view_to_lens():
    assert field_of_view_to_lens(2 * np.degrees(np.arctan(18 / 50))) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="field of view"):
        field_of_view_to_lens(180.0)
