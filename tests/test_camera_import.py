"""Importing cameras from files, turntables and exporting, in real Blender (bpy module).

The operators run as a user runs them (`bpy.ops.softras.*`), on an empty factory scene;
a failing operator raises RuntimeError with its message and must leave the scene as it
was. Cameras read back through `scene_export.camera_matrices` (the fit's own reader)
must reproduce the file's projection within 0.01 px, despite Blender storing its
settings as float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TEMPLE_DIR

bpy = pytest.importorskip("bpy")

from PIL import Image  # noqa: E402

from backend.core import camera_files as cf  # noqa: E402
from backend.core.camera import CameraMatrices, look_at, world_to_camera  # noqa: E402

pytestmark = pytest.mark.blender

TEMPLE = TEMPLE_DIR / "templeSR_par.txt"
RNG = np.random.default_rng(3)


@pytest.fixture
def scene(addon):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def project(k, pose, points) -> np.ndarray:
    cam = np.asarray(points) @ pose[:3, :3].T + pose[:3, 3]
    uvw = cam @ np.asarray(k).T
    return uvw[:, :2] / uvw[:, 2:]


def blender_error_px(scene, record: cf.CameraRecord, points) -> float:
    """Largest distance between the file's projection and the Blender camera's."""
    from softras_blender import scene_export

    cam = scene_export.camera_matrices(scene, scene.objects[record.name])
    return float(np.abs(project(record.camera.intrinsics, record.camera.world_to_camera, points)
                        - project(cam.intrinsics, cam.world_to_camera, points)).max())


def scene_state() -> tuple:
    return (len(bpy.data.objects), len(bpy.data.collections), len(bpy.data.images),
            len(bpy.data.cameras))


def write_rgba(path: Path, alpha: np.ndarray) -> Path:
    """An RGBA PNG whose alpha is ``alpha`` (H, W) uint8, row 0 at the top."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def blob(width: int, height: int, seed: int) -> np.ndarray:
    """An off-centre, asymmetric opaque blob (so flips or shifts would show)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.3, 0.6) * width, rng.uniform(0.3, 0.6) * height
    inside = ((x - cx) / (0.25 * width)) ** 2 + ((y - cy) / (0.2 * height)) ** 2 < 1
    inside |= (x > 0.75 * width) & (y < 0.2 * height)
    return np.where(inside, 255, 0).astype(np.uint8)


# --- import -------------------------------------------------------------------------------


def test_temple_import(scene):
    assert bpy.ops.softras.import_cameras(filepath=str(TEMPLE)) == {"FINISHED"}
    collection = bpy.data.collections["templeSR_par"]
    names = sorted(o.name for o in collection.objects)
    assert names == [f"templeSR{i:04d}" for i in range(1, 17)]
    render = scene.render
    assert (render.resolution_x, render.resolution_y, render.resolution_percentage) == (
        640, 480, 100)
    assert render.pixel_aspect_x / render.pixel_aspect_y == pytest.approx(1525.9 / 1520.4,
                                                                         rel=1e-6)
    cam = scene.objects["templeSR0001"]
    slot = cam.data.background_images[0]
    assert cam.data.show_background_images and slot.frame_method == "STRETCH"
    assert Path(slot.image.filepath) == TEMPLE.parent / "templeSR0001.png"
    box = RNG.uniform([-0.12, -0.03, -0.06], [0.08, 0.23, 0.11], (300, 3))
    for record in cf.read_camera_file(TEMPLE):
        assert blender_error_px(scene, record, box) < 0.01


def colmap_scene(folder: Path, fx: float, fy: float, count: int = 3, size=(48, 36)):
    """A COLMAP text model and RGBA images of blobs (``folder``/images)."""
    width, height = size
    k = cf.intrinsics_matrix(fx, fy, 0.45 * width, 0.55 * height)
    records = []
    for i in range(count):
        pose = world_to_camera(look_at(RNG.normal(size=3) * 3, (0, 0, 0)))
        name = f"view_{i}.png"
        write_rgba(folder / "images" / name, blob(width, height, i))
        records.append(cf.CameraRecord(f"view_{i}", name,
                                       CameraMatrices(k, pose, width, height, False)))
    cf.write_colmap_text(folder / "sparse" / "0", records)
    return records


@pytest.mark.parametrize("fx, fy, method", [(40.0, 40.0, "FIT"), (40.0, 52.0, "STRETCH"),
                                            (50.0, 38.0, "STRETCH")])
def test_colmap_import_fills_the_frame_exactly(scene, tmp_path, fx, fy, method):
    from softras_blender import scene_export

    records = colmap_scene(tmp_path, fx, fy)
    model = tmp_path / "sparse" / "0" / "cameras.txt"
    assert bpy.ops.softras.import_cameras(filepath=str(model)) == {"FINISHED"}
    assert "sparse 0" in bpy.data.collections
    points = RNG.normal(size=(200, 3))
    for record in records:
        assert blender_error_px(scene, record, points) < 0.01
        obj = scene.objects[record.name]
        assert obj.data.background_images[0].frame_method == method
        # The fit reads exactly the file's pixels back as its target.
        view = scene_export.view_for_camera(scene, obj, "BACKGROUND")
        expected = np.asarray(Image.open(tmp_path / "images" / record.image))[..., 3] / 255.0
        np.testing.assert_allclose(view.image[..., 3], expected, atol=1e-6)


def test_transforms_import_keeps_masks(scene, tmp_path):
    frames = []
    for i in range(2):
        write_rgba(tmp_path / "images" / f"f{i}.png", blob(32, 24, i))
        write_rgba(tmp_path / "masks" / f"f{i}.png", blob(32, 24, i))
        frames.append({"file_path": f"images/f{i}", "mask_path": f"masks/f{i}.png",
                       "transform_matrix": look_at((3, i, 1), (0, 0, 0)).tolist()})
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"fl_x": 30.0, "fl_y": 30.0, "w": 32, "h": 24,
                                "frames": frames}))
    assert bpy.ops.softras.import_cameras(filepath=str(path)) == {"FINISHED"}
    obj = scene.objects["f1"]
    assert obj["softras_mask"] == str(tmp_path / "masks" / "f1.png")
    np.testing.assert_allclose(np.array(obj.matrix_world), look_at((3, 1, 1), (0, 0, 0)),
                               atol=1e-6)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (32, 24)


def test_import_with_a_missing_image_changes_nothing(scene, tmp_path):
    records = colmap_scene(tmp_path, 40.0, 40.0)
    (tmp_path / "images" / records[1].image).unlink()
    before = scene_state()
    with pytest.raises(RuntimeError, match="1 image.* not found .*view_1.png"):
        bpy.ops.softras.import_cameras(filepath=str(tmp_path / "sparse" / "0"))
    assert scene_state() == before


def test_import_with_mixed_image_sizes_changes_nothing(scene, tmp_path):
    records = colmap_scene(tmp_path, 40.0, 40.0)
    write_rgba(tmp_path / "images" / records[2].image, blob(24, 18, 2))
    before = scene_state()
    with pytest.raises(RuntimeError, match="mixed sizes .*48x36.*24x18: view_2.png"):
        bpy.ops.softras.import_cameras(filepath=str(tmp_path / "sparse" / "0"))
    assert scene_state() == before


def test_import_of_a_malformed_file_names_the_line(scene, tmp_path):
    path = tmp_path / "broken_par.txt"
    path.write_text("1\nimg.png 1 2 3\n")
    with pytest.raises(RuntimeError, match="broken_par.txt, line 2: expected an image name"):
        bpy.ops.softras.import_cameras(filepath=str(path))
    assert scene_state() == (0, 0, 0, 0)


def test_images_folder_option(scene, tmp_path):
    records = colmap_scene(tmp_path / "a", 40.0, 40.0, count=2)
    (tmp_path / "a" / "images").rename(tmp_path / "photos")
    assert bpy.ops.softras.import_cameras(filepath=str(tmp_path / "a" / "sparse" / "0"),
                                          images_dir=str(tmp_path / "photos")) == {"FINISHED"}
    slot = scene.objects[records[0].name].data.background_images[0]
    assert Path(slot.image.filepath).parent == tmp_path / "photos"


# --- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["TRANSFORMS", "COLMAP"])
def test_export_round_trips_the_imported_cameras(scene, tmp_path, file_format):
    bpy.ops.softras.import_cameras(filepath=str(TEMPLE))
    target = tmp_path / "out.json"
    assert bpy.ops.softras.export_cameras(filepath=str(target),
                                          file_format=file_format) == {"FINISHED"}
    if file_format == "TRANSFORMS":
        back = cf.load_camera_file(target)
        assert back[0].image_path == TEMPLE.parent / "templeSR0001.png"  # relative path kept
        records = cf.read_camera_file(target)
    else:
        records = cf.read_camera_file(tmp_path / "out", images_dir=TEMPLE.parent)
    original = {r.name: r for r in cf.read_camera_file(TEMPLE)}
    points = RNG.uniform([-0.12, -0.03, -0.06], [0.08, 0.23, 0.11], (300, 3))
    assert sorted(r.name for r in records) == sorted(original)
    for record in records:
        ref = original[record.name].camera
        error = np.abs(project(ref.intrinsics, ref.world_to_camera, points)
                       - project(record.camera.intrinsics, record.camera.world_to_camera,
                                 points)).max()
        assert error < 0.01


def test_export_without_cameras_is_refused(scene, tmp_path):
    with pytest.raises(RuntimeError, match="no cameras to export"):
        bpy.ops.softras.export_cameras(filepath=str(tmp_path / "t.json"))


# --- turntables -------------------------------------------------------------------------------


def test_turntable_around_an_object(scene):
    from softras_blender import scene_export

    bpy.ops.mesh.primitive_cube_add(location=(0.5, -0.3, 0.2))
    assert bpy.ops.softras.add_turntable(count=6, elevations="10, 40", distance=4.0,
                                         centre="OBJECT", centre_object="Cube",
                                         lens_unit="FOV", fov=np.radians(40.0)) == {"FINISHED"}
    cameras = sorted((o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
    assert len(cameras) == 12 and cameras[0].name == "Turntable.000"
    centre = np.array([[0.5, -0.3, 0.2]])
    width, height = scene.render.resolution_x, scene.render.resolution_y
    for obj in cameras:
        cam = scene_export.camera_matrices(scene, obj)
        np.testing.assert_allclose(project(cam.intrinsics, cam.world_to_camera, centre),
                                   [[width / 2, height / 2]], atol=1e-3)
        eye = np.array(obj.matrix_world.translation)
        assert np.linalg.norm(eye - centre[0]) == pytest.approx(4.0, rel=1e-6)
        assert 2 * np.degrees(np.arctan(18.0 / obj.data.lens)) == pytest.approx(40.0)


def test_turntable_about_an_objects_own_axis(scene):
    bpy.ops.mesh.primitive_cube_add(location=(1.0, 2.0, 0.0), rotation=(np.pi / 2, 0.0, 0.0))
    assert bpy.ops.softras.add_turntable(count=4, elevations="0", distance=2.0,
                                         centre="OBJECT", axis="OBJECT",
                                         centre_object="Cube") == {"FINISHED"}
    axis = np.array(scene.objects["Cube"].matrix_world.to_3x3().col[2])  # world -Y
    for obj in (o for o in scene.objects if o.type == "CAMERA"):
        offset = np.array(obj.matrix_world.translation) - [1.0, 2.0, 0.0]
        assert abs(offset @ axis) < 1e-5  # elevation 0: in the plane across the axis
        assert np.array(obj.matrix_world.to_3x3().col[1]) @ axis > 0.99  # image up = axis


def test_turntable_with_a_folder_of_images(scene, tmp_path):
    for i in range(8):
        write_rgba(tmp_path / "photos" / f"img_{i:02d}.png", blob(40, 30, i))
    result = bpy.ops.softras.add_turntable(spacing="STEP", step=np.radians(45.0),
                                           elevations="15", distance=3.0,
                                           image_folder=str(tmp_path / "photos"))
    assert result == {"FINISHED"}
    assert (scene.render.resolution_x, scene.render.resolution_y) == (40, 30)
    first, second = scene.objects["img_00"], scene.objects["img_01"]
    assert Path(first.data.background_images[0].image.filepath).name == "img_00.png"
    # Counter-clockwise about +Z, starting on +X.
    assert first.matrix_world.translation.x > 2.0
    assert second.matrix_world.translation.y > 1.5


def test_turntable_with_the_wrong_number_of_images_changes_nothing(scene, tmp_path):
    for i in range(5):
        write_rgba(tmp_path / f"img_{i}.png", blob(40, 30, i))
    before = scene_state()
    with pytest.raises(RuntimeError, match="holds 5 images but the turntable has 8 views"):
        bpy.ops.softras.add_turntable(count=8, image_folder=str(tmp_path))
    with pytest.raises(RuntimeError, match="elevations .* must be numbers"):
        bpy.ops.softras.add_turntable(count=5, elevations="ten")
    assert scene_state() == before


# --- against Cycles ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cycles_renders_a_point_where_the_file_projects_it(scene, tmp_path):
    """A small sphere rendered through an imported camera with fx != fy and an
    off-centre principal point: its silhouette's centre is where K [R | t] puts it."""
    from devtools import cycles_render as cycles

    width, height = 96, 72
    k = cf.intrinsics_matrix(110.0, 140.0, 41.3, 30.2)
    pose = world_to_camera(look_at((0.3, -4.0, 0.8), (0.0, 0.0, 0.0)))
    record = cf.CameraRecord("cam", "cam.png", CameraMatrices(k, pose, width, height, False))
    write_rgba(tmp_path / "cam.png", np.zeros((height, width), np.uint8))
    cf.write_transforms(tmp_path / "transforms.json", [record])
    bpy.ops.softras.import_cameras(filepath=str(tmp_path / "transforms.json"))
    centres = np.array([[0.0, 0.0, 0.0], [0.7, 0.2, 0.5], [-0.8, -0.3, -0.4]])
    for centre in centres:
        bpy.ops.mesh.primitive_uv_sphere_add(radius=0.08, location=centre, segments=48,
                                             ring_count=24)
    cycles.configure_cycles(scene, samples=1, filter_width=0.01)
    alpha = cycles.render_rgba(scene, scene.objects["cam"])[..., 3]
    expected = project(k, pose, centres)
    for u, v in expected:  # the alpha centroid near each expected point
        y, x = np.mgrid[0:height, 0:width]
        near = (np.hypot(x + 0.5 - u, y + 0.5 - v) < 8) * alpha
        found = np.array([(near * (x + 0.5)).sum(), (near * (y + 0.5)).sum()]) / near.sum()
        assert np.abs(found - [u, v]).max() < 0.5
