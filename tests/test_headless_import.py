"""Real captures from the command line and in the add-on: headless --import, silhouettes
from photos, the contact sheet, bad input (exit 2, nothing written), and "Preview
Silhouettes". The data: the temple photos in data/templeSparseRing (16 calibrated
640x480 photos on a black backdrop, no alpha), fitted small on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TEMPLE_DIR

bpy = pytest.importorskip("bpy")

pytestmark = [pytest.mark.blender, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
HEADLESS = REPO / "softras_blender" / "headless.py"
TEMPLE = TEMPLE_DIR
TEMPLE_PAR = TEMPLE / "templeSR_par.txt"


def run(args: list[str], user_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, SOFTRAS_USER_DIR=str(user_dir))
    return subprocess.run([sys.executable, str(HEADLESS), "--", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout, check=False)


def one_error(done: subprocess.CompletedProcess) -> str:
    errors = [line for line in done.stderr.splitlines() if "softras headless: error:" in line]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def test_import_only_saves_the_cameras_and_photos(tmp_path):
    out = tmp_path / "temple.blend"
    done = run(["--import", str(TEMPLE_PAR), "--iterations", "0", "--output", str(out)],
               tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "added 16 cameras" in done.stdout
    bpy.ops.wm.open_mainfile(filepath=str(out))
    cams = sorted(o.name for o in bpy.data.objects if o.type == "CAMERA")
    assert cams == [f"templeSR{i:04d}" for i in range(1, 17)]
    assert all(bpy.data.objects[c].data.background_images[0].image is not None for c in cams)
    assert bpy.context.scene.render.resolution_x == 640


def test_turntable_options_add_a_rig_with_the_folders_photos(tmp_path):
    out = tmp_path / "rig.blend"
    done = run(["--turntable", "8", "--turntable-elevations", "10, 40", "--turntable-distance",
                "3", "--turntable-lens", "35", "--turntable-centre", "0,0,1", "--images",
                str(TEMPLE), "--iterations", "0", "--output", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "added 16 cameras in 'Turntable'" in done.stdout
    bpy.ops.wm.open_mainfile(filepath=str(out))
    cams = sorted((o for o in bpy.data.objects if o.type == "CAMERA"), key=lambda o: o.name)
    assert [c.name for c in cams] == [f"templeSR{i:04d}" for i in range(1, 17)]
    assert all(c.data.lens == 35 for c in cams)
    centre = np.array([0.0, 0.0, 1.0])
    distances = [np.linalg.norm(np.array(c.matrix_world.translation) - centre) for c in cams]
    assert np.allclose(distances, 3.0, atol=1e-4)
    wrong = run(["--turntable", "5", "--images", str(TEMPLE), "--iterations", "0", "--output",
                 str(tmp_path / "wrong.blend")], tmp_path)
    assert wrong.returncode == 2 and "holds 16 images but the turntable has 5 views" in (
        one_error(wrong))
    assert not (tmp_path / "wrong.blend").exists()


def test_a_fit_from_the_raw_photos_reports_silhouettes_and_a_contact_sheet(tmp_path):
    report, sheet = tmp_path / "report.json", tmp_path / "sheet.png"
    done = run(["--import", str(TEMPLE_PAR), "--iterations", "40", "--resolution", "80",
                "--device", "cpu", "--hold-out-every", "4", "--report", str(report),
                "--contact-sheet", str(sheet)], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "silhouettes: 16 / 16 views" in done.stdout
    data = json.loads(report.read_text())
    assert set(data["silhouettes"]["sources"].values()) == {"key"}
    assert data["silhouettes"]["checked"] and data["silhouettes"]["flagged"] == []
    assert len(data["heldout_iou"]) == 4
    assert np.mean(list(data["heldout_iou"].values())) > 0.8
    assert data["import_seconds"] < 5 and data["contact_sheet"] == str(sheet)
    assert sheet.is_file() and sheet.stat().st_size > 10_000


@pytest.fixture(scope="module")
def broken_inputs(tmp_path_factory) -> Path:
    """Folders of bad input: an unparsable camera file, photos without files, masks of
    another size, a black photo (no object), masks no two views agree on."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "bad_par.txt").write_text("1\ntemple.png 1 2 3\n")
    (root / "no_images").mkdir()
    shutil.copy(TEMPLE_PAR, root / "no_images" / "templeSR_par.txt")
    masks = root / "small_masks"
    masks.mkdir()
    for i in range(1, 17):
        bpy.data.images.new("m", 64, 48).save(filepath=str(masks / f"templeSR{i:04d}.png"))
    black = root / "black"
    shutil.copytree(TEMPLE, black)
    photo = bpy.data.images.load(str(black / "templeSR0005.png"))
    photo.pixels.foreach_set(np.tile(np.array([0, 0, 0, 1], np.float32), 640 * 480))
    photo.save()
    write_disagreeing_masks(root / "disagreeing_masks")
    return root


def write_disagreeing_masks(folder: Path) -> None:
    """A mask per temple photo: the temple (the dataset's threshold) plus a square in a
    corner that changes from view to view, so every view's mask reaches far outside the
    hull the other views agree on."""
    folder.mkdir()
    for i in range(1, 17):
        photo = bpy.data.images.load(str(TEMPLE / f"templeSR{i:04d}.png"))
        rgba = np.empty(640 * 480 * 4, np.float32)
        photo.pixels.foreach_get(rgba)
        bpy.data.images.remove(photo)
        mask = (rgba.reshape(480, 640, 4)[..., :3].mean(axis=2) > 0.19).astype(np.float32)
        top, left = (10, 330)[i % 4 // 2], (10, 490)[i % 2]  # rows counted from the bottom
        mask[top:top + 140, left:left + 140] = 1.0
        image = bpy.data.images.new("mask", 640, 480)
        image.pixels.foreach_set(np.repeat(mask.reshape(-1), 4))
        image.filepath_raw, image.file_format = str(folder / f"templeSR{i:04d}.png"), "PNG"
        image.save()
        bpy.data.images.remove(image)


@pytest.mark.parametrize("case, args, reason", [
    ("unparsable", ["--import", "{root}/bad_par.txt"], "line 2"),
    ("images missing", ["--import", "{root}/no_images/templeSR_par.txt"], "templeSR0001"),
    ("masks without a folder", ["--import", str(TEMPLE_PAR), "--silhouettes", "masks"],
     "--silhouettes masks needs --masks DIR"),
    ("mask of another size", ["--import", str(TEMPLE_PAR), "--masks", "{root}/small_masks"],
     "its mask templeSR0001.png is 64x48 but its image is 640x480"),
    ("learned without a model", ["--import", str(TEMPLE_PAR), "--silhouettes", "learned"],
     "needs a salient-object model (U2-Net class, ONNX) and none is installed"),
    ("photo with no object", ["--import", "{root}/black/templeSR_par.txt", "--silhouettes",
                              "key", "--resolution", "64"], "templeSR0005: no object found"),
    ("every view flagged", ["--import", str(TEMPLE_PAR), "--masks", "{root}/disagreeing_masks",
                            "--resolution", "64"],
     "every view disagrees with the others, so no silhouettes are left to fit: templeSR0001:"),
])
def test_bad_input_exits_2_with_one_reason_and_writes_nothing(broken_inputs, tmp_path, case,
                                                              args, reason):
    out = tmp_path / "out.blend"
    args = [a.format(root=broken_inputs) for a in args]
    done = run([*args, "--iterations", "5", "--device", "cpu", "--output", str(out)], tmp_path)
    assert done.returncode == 2, (case, done.stdout[-1500:], done.stderr[-1500:])
    assert reason in one_error(done), case
    assert not out.exists()


# -- the add-on: Preview Silhouettes ------------------------------------------------------


def test_preview_shows_each_cameras_mask_and_clear_removes_it(addon):
    from softras_blender import camera_import, preview, runtime

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    camera_import.import_cameras(scene, TEMPLE_PAR)
    scene.softras.resolution = 64
    assert bpy.ops.softras.preview_silhouettes() == {"FINISHED"}
    cams = [o for o in scene.objects if o.type == "CAMERA"]
    for cam in cams:
        slots = cam.data.background_images
        assert len(slots) == 2 and slots[0].image.name.startswith("templeSR")
        mask = slots[1].image
        assert mask.name == preview.PREVIEW_PREFIX + cam.name and tuple(mask.size) == (64, 48)
        alpha = np.empty(64 * 48 * 4, np.float32)
        mask.pixels.foreach_get(alpha)
        covered = alpha.reshape(48, 64, 4)[..., 3].mean()
        assert 0.05 < covered < 0.6, (cam.name, covered)  # the temple, not the whole frame
        assert slots[1].alpha == preview.PREVIEW_ALPHA and slots[1].display_depth == "FRONT"
    assert runtime.preview_status()[0] == "Silhouettes of 16 cameras (key)"
    # The fit still reads the photos, not the preview.
    from softras_blender import scene_export

    assert scene_export.background_image(cams[0]).image.name.startswith("templeSR")
    assert bpy.ops.softras.clear_silhouette_preview() == {"FINISHED"}
    assert all(len(c.data.background_images) == 1 for c in cams)
    assert not [i for i in bpy.data.images if i.name.startswith(preview.PREVIEW_PREFIX)]


def test_masks_are_read_in_the_add_on_and_placed_like_their_images(addon, tmp_path):
    from softras_blender import camera_import, scene_export
    from softras_blender.camera_import import MASK_PROPERTY

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    camera_import.import_cameras(scene, TEMPLE_PAR)
    masks = tmp_path / "masks"
    masks.mkdir()
    truth = np.zeros((480, 640, 4), np.float32)
    truth[..., 3] = 1.0
    truth[120:360, 160:480, :3] = 1.0  # a white box in the middle (row 0 at the bottom)
    for i in range(1, 17):
        image = bpy.data.images.new(f"mask{i}", 640, 480)
        image.pixels.foreach_set(truth.ravel())
        image.save(filepath=str(masks / f"templeSR{i:04d}_mask.png"))
    special = tmp_path / "special.png"
    image = bpy.data.images.new("special", 640, 480)
    image.pixels.foreach_set(np.ones(640 * 480 * 4, np.float32))
    image.save(filepath=str(special))
    cams = sorted((o for o in scene.objects if o.type == "CAMERA"), key=lambda o: o.name)
    cams[2][MASK_PROPERTY] = str(special)  # as a transforms.json's mask_path sets it
    views = scene_export.export_views(scene, cams, "BACKGROUND", resolution=64, mode="MASKS",
                                      mask_folder=str(masks))
    assert views[0].mask.shape == (48, 64) and views[0].mask.dtype == np.float32
    assert views[0].mask[12:36, 16:48].min() > 0.99 and views[0].mask[:10].max() < 0.01
    assert views[2].mask.min() > 0.99  # the camera's own mask file wins
    assert views[0].image[..., 3].min() == 1.0  # opaque photos are no error outside ALPHA
    alpha_views = scene_export.export_views(scene, cams[:1], "BACKGROUND", resolution=64,
                                            mode="KEY", mask_folder=str(masks))
    assert alpha_views[0].mask is None
    with pytest.raises(scene_export.ExportError, match="opaque everywhere"):
        scene_export.export_views(scene, cams[:1], "BACKGROUND", resolution=64, mode="ALPHA")
