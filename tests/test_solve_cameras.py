"""Solve Cameras wired into the product: the solve_cameras message, the backend answering
it (errors, cancel), the add-on's operator and import, and bad input leaving the scene as
it was. The solve's accuracy is tests/test_sfm.py's and benchmarks/bench_sfm.py's."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photos

from backend.core import messages, protocol
from softras_blender.client import BackendClient, default_backend_command

REPO = Path(__file__).resolve().parent.parent
needs_pycolmap = pytest.mark.skipif(importlib.util.find_spec("pycolmap") is None,
                                    reason="pycolmap is not installed (the backend extra)")
# A backend whose Python lacks pycolmap: find_spec returns None for a None module entry.
NO_PYCOLMAP = (f"{sys.executable} -c \"import runpy, sys; sys.modules['pycolmap'] = None; "
               "sys.argv = ['backend'] + sys.argv[3:]; "
               "runpy.run_module('backend', run_name='__main__', alter_sys=True)\"")


def round_trip(message: dict) -> dict:
    """The message as the other side reads it off the wire."""
    import io

    stream = io.BytesIO()
    protocol.write_frame(stream, message)
    stream.seek(0)
    return protocol.read_frame(stream)


# --- the message ----------------------------------------------------------------------


def ring_of_eight(height: float) -> list:
    """Eight 320x240 cameras 45 degrees apart on a ring of radius 4 at ``height`` x 4 above
    the origin, looking at it, the first from -Y."""
    from backend.core.camera import blender_camera, look_at

    cameras = []
    for i in range(8):
        angle = 2 * np.pi * i / 8
        eye = 4.0 * np.array([np.sin(angle), -np.cos(angle), height])
        cameras.append(blender_camera(matrix_world=look_at(eye, np.zeros(3)), resolution_x=320,
                                      resolution_y=240))
    return cameras


def test_solve_cameras_request_survives_the_wire():
    sent = messages.solve_cameras(4, ["a/1.jpg", "a/2.jpg"], "/tmp/model", "sequential",
                                  (0.0, 0.0, 2.0), 3)
    request = messages.parse_solve_cameras(round_trip(sent))
    assert (request.fit_id, request.images, request.output) == (4, ["a/1.jpg", "a/2.jpg"],
                                                                 "/tmp/model")
    assert request.ordering == "sequential" and request.known_distance == 3.0
    np.testing.assert_array_equal(request.up, [0.0, 0.0, 2.0])
    folder = messages.parse_solve_cameras(round_trip(messages.solve_cameras(5, "photos", "m")))
    assert (folder.images, folder.up, folder.known_distance) == ("photos", "auto", None)


@pytest.mark.parametrize("field, value, complaint", [
    ("images", 3, "images must be"), ("output", "", "output must"), ("up", [1, 2], "up must"),
    ("known_distance", "far", "known_distance must"), ("ordering", None, "ordering must")])
def test_malformed_solve_requests_say_what_is_wrong(field, value, complaint):
    message = {**messages.solve_cameras(1, "photos", "model"), field: value}
    with pytest.raises(ValueError, match=complaint):
        messages.parse_solve_cameras(message)


def test_sideways_photos_take_up_from_the_cameras_looking_down():
    """Photos rolled 90 degrees (portrait photos stored sideways, as the Middlebury temple
    ring's): their up says nothing about the ring's side, so the cameras, which look
    down on the subject, end up above it."""
    from backend.sfm import SolvedCamera, SolveResult, normalise_scene

    roll = np.diag([1.0, 1.0, 1.0, 1.0])
    roll[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]  # 90 degrees about the viewing axis
    cameras = []
    for i, camera in enumerate(ring_of_eight(height=0.5)):
        rolled = type(camera)(camera.intrinsics, roll @ camera.world_to_camera, 320, 240,
                              False)
        cameras.append(SolvedCamera(f"v{i}", f"v{i}.png", rolled, "PINHOLE", 100))
    result = SolveResult(Path("."), tuple(cameras), (), np.zeros((0, 3)), {}, "exhaustive")
    normalised = normalise_scene(result, known_distance=4.0 * np.sqrt(1.25))
    poses = np.stack([c.camera.world_to_camera for c in normalised.cameras])
    heights = -np.einsum("nji,nj->ni", poses[:, :3, :3], poses[:, :3, 3])[:, 2]
    np.testing.assert_allclose(heights, 2.0, atol=1e-6)
    assert "looking down" in normalised.frame["up"]


# --- the backend ----------------------------------------------------------------------


def answer(client: BackendClient, timeout: float = 120.0, on_progress=None) -> dict:
    """The request's last event (cameras or error), feeding progress to on_progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll():
            if event["type"] == "solve_progress" and on_progress is not None:
                on_progress(event)
            if event["type"] in ("cameras", "error"):
                return event
        time.sleep(0.02)
    raise TimeoutError("the backend did not answer the solve")


@needs_pycolmap
@pytest.mark.slow
def test_backend_reports_bad_photos_and_stops_a_cancelled_solve(tmp_path):
    """One backend: too few photos, photos that do not register (with reasons), then a
    solve cancelled midway answers "cancelled" promptly and the backend takes more work."""
    few = write_photos(tmp_path / "few", ["noise", "noise"])
    unmatched = write_photos(tmp_path / "unmatched", ["noise", "noise", "plain"])
    many = write_photos(tmp_path / "many", ["noise"] * 6, size=(640, 480))
    with BackendClient(default_backend_command(sys.executable, 1), cwd=str(REPO)) as client:
        client.start()
        client.solve_cameras(str(few), str(tmp_path / "model"))
        error = answer(client)
        assert error["type"] == "error" and error["kind"] == "fit"
        assert "found 2 photo(s)" in error["message"] and "at least 3" in error["message"]

        client.solve_cameras(str(unmatched), str(tmp_path / "model"))
        error = answer(client)
        assert error["kind"] == "fit" and "none of the 3 photos" in error["message"]
        assert "photo_2.png: only 0 SIFT features" in error["message"]

        client.solve_cameras(str(many), str(tmp_path / "model"))
        asked = []

        def cancel_once(event: dict) -> None:
            if not asked:
                asked.append(time.monotonic())
                client.cancel()

        reply = answer(client, on_progress=cancel_once)
        assert time.monotonic() - asked[0] < 3.0
        assert reply["type"] == "cameras" and reply["status"] == "cancelled"
        assert reply["model"] is None and "cancelled during features" in reply["message"]
        assert not (tmp_path / "model").exists()
        client.solve_cameras(str(few), str(tmp_path / "model"))  # not busy any more
        assert answer(client)["kind"] == "fit"


# --- the add-on -------------------------------------------------------------------------


@pytest.fixture
def scene(addon):
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def scene_state(scene) -> tuple:
    """What a failed solve must not change: objects, collections, images, fit settings."""
    import bpy

    settings = scene.softras
    return (sorted(o.name for o in bpy.data.objects), sorted(c.name for c in bpy.data.collections),
            len(bpy.data.images), settings.camera_source, settings.camera_collection,
            settings.image_source)


def solve_error(scene, folder, backend_command: str = sys.executable) -> str:
    import bpy

    scene.softras.solve_folder = str(folder)
    with pytest.raises(RuntimeError) as caught:
        bpy.ops.softras.solve_cameras(backend_command=backend_command, threads=1)
    return str(caught.value)


@pytest.mark.blender
@pytest.mark.slow
@needs_pycolmap
def test_operator_refuses_bad_photos_and_changes_nothing(scene, tmp_path):
    from softras_blender import runtime

    before = scene_state(scene)
    assert "choose the folder of photos" in solve_error(scene, "")
    assert "is not a folder" in solve_error(scene, tmp_path / "nowhere")
    message = solve_error(scene, write_photos(tmp_path / "few", ["noise", "noise"]))
    assert "Camera solve failed" in message and "at least 3" in message
    assert scene_state(scene) == before
    assert runtime.state.solve is None
    assert runtime.state.solve_status[0].startswith("Camera solve failed")


@pytest.mark.blender
@pytest.mark.slow
def test_missing_pycolmap_names_the_install_command(scene, tmp_path):
    before = scene_state(scene)
    message = solve_error(scene, write_photos(tmp_path / "p", ["noise"] * 3), NO_PYCOLMAP)
    assert "needs pycolmap" in message and "pip install 'pycolmap==" in message
    assert scene_state(scene) == before


@pytest.mark.blender
@pytest.mark.slow
@needs_pycolmap
def test_cancel_midway_stops_the_backend_and_changes_nothing(scene, tmp_path):
    from softras_blender import runtime, solve_operators

    folder = write_photos(tmp_path / "p", ["noise"] * 6, size=(640, 480))
    before = scene_state(scene)
    session = solve_operators.SolveSession(solve_operators.SolveRequest(str(folder)))
    session.start(runtime.backend_launch(runtime.backend_settings(), [sys.executable], 1))
    deadline = time.monotonic() + 120
    while session.stage is None:
        assert not session.step() and time.monotonic() < deadline
        time.sleep(0.02)
    assert session.stage == "features" and 0.0 <= session.progress < 1 / 3
    scratch, client = session.model_folder.parent, session.client
    started = time.monotonic()
    session.cancel()
    assert time.monotonic() - started < 5.0
    assert client._process.poll() is not None  # the backend is gone
    assert not scratch.exists()
    assert scene_state(scene) == before


def solved_reply(tmp_path: Path) -> dict:
    """A "cameras" message as the backend sends it, for a ring of 8 cameras around the
    origin (photos on disk; one more photo left out), its model written by backend.sfm."""
    from PIL import Image

    from backend.sfm import SolvedCamera, SolveResult, UnregisteredImage, write_colmap_model

    photos = tmp_path / "statue"
    photos.mkdir()
    cameras = []
    for i, camera in enumerate(ring_of_eight(height=0.4)):
        Image.new("RGB", (320, 240), (90, 120, 150)).save(photos / f"view_{i}.png")
        cameras.append(SolvedCamera(f"view_{i}", f"view_{i}.png", camera, "PINHOLE", 500))
    Image.new("RGB", (320, 240)).save(photos / "view_8.png")
    result = SolveResult(photos, tuple(cameras),
                         (UnregisteredImage("view_8.png", "only 0 SIFT features"),),
                         np.zeros((0, 3)), {"features": 1.0, "matching": 2.0, "mapping": 3.0},
                         "exhaustive", {"source": "normalised", "up": "the camera ring's "
                                        "plane normal", "scale": "the subject's points at "
                                        "about unit radius", "similarity_scale": 0.5})
    model = write_colmap_model(result, tmp_path / "scratch" / "statue")
    return round_trip(messages.cameras_solved(3, result, str(model)))


@pytest.mark.blender
def test_solved_cameras_are_imported_as_a_colmap_model_ready_to_fit(scene, tmp_path):
    from softras_blender import solve_operators

    reply = solved_reply(tmp_path)
    collection = solve_operators.import_solution(scene, reply)
    assert collection.name == "statue"
    cameras = sorted((o for o in collection.objects if o.type == "CAMERA"), key=lambda o: o.name)
    assert [o.name for o in cameras] == [f"view_{i}" for i in range(8)]
    first = cameras[0]
    assert first.data.background_images[0].image.filepath.endswith("view_0.png")
    np.testing.assert_allclose(first.matrix_world.translation, [0.0, -4.0, 1.6], atol=1e-5)
    settings = scene.softras
    assert settings.camera_source == "COLLECTION" and settings.camera_collection == collection
    lines = solve_operators.summary_lines(reply, collection.name)
    assert lines[0] == "Solved 8 of 9 cameras into 'statue' in 6 s"
    assert lines[-1] == "Not registered: view_8.png: only 0 SIFT features"


@pytest.mark.blender
def test_a_gravity_given_in_the_photos_turns_the_solved_scene(scene, tmp_path):
    from softras_blender import solve_operators

    reply = solved_reply(tmp_path)
    before = scene_state(scene)
    # Gravity along the photos' x axis: on a ring the cameras' x axes cancel out.
    with pytest.raises(ValueError, match="points a different way in each solved camera"):
        solve_operators.import_solution(scene, reply, (1.0, 0.0, 0.0))
    assert scene_state(scene) == before
    gravity = np.array([0.3, -1.0, 0.4])
    collection = solve_operators.import_solution(scene, reply, tuple(gravity))
    cameras = [o for o in collection.objects if o.type == "CAMERA"]
    down = np.mean([np.array(o.matrix_world.to_3x3()) @ gravity for o in cameras], axis=0)
    np.testing.assert_allclose(down / np.linalg.norm(down), [0.0, 0.0, -1.0], atol=1e-6)
    distances = [np.linalg.norm(o.matrix_world.translation) for o in cameras]
    np.testing.assert_allclose(distances, np.linalg.norm([0.0, -4.0, 1.6]), rtol=1e-5)
    lines = solve_operators.summary_lines(reply, collection.name, tuple(gravity))
    assert lines[1].startswith("Up: against the gravity given in the photos, 0.3, -1, 0.4")


@pytest.mark.blender
def test_upright_gravity_keeps_the_solved_frame_and_the_panel_asks_for_it(scene, tmp_path):
    import bpy
    from test_addon_fit import draw

    from softras_blender import solve_operators

    reply = solved_reply(tmp_path)
    collection = solve_operators.import_solution(scene, reply, (0.0, -2.0, 0.0))
    first = min((o for o in collection.objects if o.type == "CAMERA"), key=lambda o: o.name)
    np.testing.assert_allclose(first.matrix_world.translation, [0.0, -4.0, 1.6], atol=1e-5)
    settings = scene.softras
    settings.solve_folder, settings.solve_up = str(tmp_path), "GRAVITY"
    assert ("prop", "solve_gravity") in draw(solve_operators.SOFTRAS_PT_solve_cameras,
                                             bpy.context)
    request = solve_operators.solve_request(settings)
    assert (request.up, request.gravity) == ("auto", (0.0, -1.0, 0.0))
    settings.solve_gravity = (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="the gravity direction is zero"):
        solve_operators.solve_request(settings)


@pytest.mark.blender
def test_panel_shows_the_settings_then_the_solve_progress(scene):
    import bpy
    from test_addon_fit import draw

    from softras_blender import runtime, solve_operators

    runtime.state.solve_status = ["Solved 8 of 9 cameras into 'statue' in 6 s"]
    idle = draw(solve_operators.SOFTRAS_PT_solve_cameras, bpy.context)
    assert [e[1] for e in idle if e[0] == "prop"] == ["solve_folder", "solve_ordering",
                                                      "solve_up", "solve_distance"]
    assert ("operator", "softras.solve_cameras") in idle
    assert ("label", "Solved 8 of 9 cameras into 'statue' in 6 s") in idle
    session = solve_operators.SolveSession(solve_operators.SolveRequest("/photos"))
    session.sent, session.stage, session.fraction = True, "matching", 0.5
    session.message = "exhaustive matching"
    runtime.state.solve = session
    try:
        busy = draw(solve_operators.SOFTRAS_PT_solve_cameras, bpy.context)
    finally:
        runtime.state.solve = None
    assert ("progress", 0.5, "Matching photos: exhaustive matching") in busy
    assert ("operator", "softras.solve_cameras") not in busy


@pytest.mark.blender
@pytest.mark.slow
@needs_pycolmap
def test_headless_solve_refuses_bad_photos_with_exit_code_2(tmp_path):
    import subprocess

    pytest.importorskip("bpy")
    headless = [sys.executable, str(REPO / "softras_blender" / "headless.py"), "--"]
    env = dict(os.environ, SOFTRAS_USER_DIR=str(tmp_path / "user"))
    output = tmp_path / "out.blend"
    for args, reason in (
            (["--solve-cameras", "--iterations", "0", "--output", str(output)],
             "--solve-cameras needs --images DIR"),
            (["--solve-cameras", "--images", str(tmp_path), "--solve-gravity", "0,-1",
              "--iterations", "0", "--output", str(output)],
             "--solve-gravity 0,-1: give three numbers x,y,z"),
            (["--solve-cameras", "--images", str(tmp_path), "--solve-gravity", "0,-1,0",
              "--solve-up", "ring", "--iterations", "0", "--output", str(output)],
             "--solve-gravity sets which way is up: leave out --solve-up"),
            (["--solve-cameras", "--images", str(write_photos(tmp_path / "few", ["noise"] * 2)),
              "--iterations", "0", "--output", str(output), "--backend-python",
              sys.executable, "--threads", "1"], "at least 3")):
        done = subprocess.run(headless + args, capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=300, check=False)
        assert done.returncode == 2, done.stderr[-2000:]
        assert reason in done.stderr.splitlines()[-1]
        assert not output.exists()
