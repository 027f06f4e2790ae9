"""The backend client (softras_blender/client.py) against the real backend process and
against small fake backends that misbehave on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fit_scenes
import numpy as np
import pytest
import torch

from backend.core.messages import View
from softras_blender import client as client_module

REPO = Path(__file__).resolve().parent.parent


BackendClient = client_module.BackendClient
BackendError = client_module.BackendError
FitFailedError = client_module.FitFailedError
default_backend_command = client_module.default_backend_command

BACKEND = default_backend_command(sys.executable) + ["--max-vertex-rate", "50"]


def ellipsoid_scene(size=32, count=6):
    """Silhouettes of an off-centre ellipsoid seen by a ring of cameras, and a sphere to
    start from: (vertices (V, 3) float32, faces (F, 3) int32, views for start_fit)."""
    v, f = fit_scenes.sphere(level=2)
    target = v * [1.0, 0.6, 0.45] + [0.2, 0.0, 0.1]
    cams = fit_scenes.cameras(size=(size, size), elevations=(25.0,), azimuths=count,
                              azimuth_offset=15.0)
    views = [View(view.camera, view.image, view.name, view.held_out)
             for view in fit_scenes.views_of(target, f, cams)]
    return (0.8 * v).astype(np.float32), f.astype(np.int32), views


@pytest.fixture(scope="module")
def scene():
    return ellipsoid_scene()


@pytest.fixture(scope="module")
def backend():
    """One real backend process shared by the tests that leave it healthy."""
    client = BackendClient(BACKEND, timeout=20)
    client.start()
    yield client
    client.shutdown()


def run_until_done(client, fit_id, limit=60.0):
    """Poll like the add-on's timer does; returns (events, streamed vertex messages)."""
    events, streamed = [], []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        events += client.poll()
        mesh = client.latest_mesh()
        if mesh is not None:
            streamed.append(mesh)
        if events and events[-1]["type"] in ("done", "error") and events[-1]["fit_id"] == fit_id:
            return events, streamed
        time.sleep(0.02)
    raise AssertionError(f"fit {fit_id} did not end within {limit} s: {events[-3:]}")


# -- the real backend ---------------------------------------------------------------------

def test_hello_reports_versions_and_device(backend):
    hello = backend.hello
    assert hello["protocol"] == client_module.protocol.PROTOCOL_VERSION
    assert hello["torch"] == torch.__version__
    assert hello["device"] in ("cpu", "cuda")
    assert (hello["gpu_name"] is not None) == hello["cuda_available"]
    assert hello["pid"] == backend.pid


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_the_backend_opens_no_socket(backend):
    targets = []
    for fd in Path(f"/proc/{backend.pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:  # closed between the listing and the read (a worker's file)
            continue
    assert sum(t.startswith("pipe:") for t in targets) >= 3
    assert not [t for t in targets if t.startswith("socket:")]


def test_a_small_fit_streams_vertices_and_improves_the_iou(backend, scene):
    vertices, faces, views = scene
    fit_id = backend.start_fit(vertices, faces, views,
                               {"iterations": 40, "stream_every": 5, "device": "cpu",
                                "topology": "keep"})
    events, streamed = run_until_done(backend, fit_id)
    done = events[-1]
    assert done["type"] == "done" and done["status"] == "done", done
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and all(e["fit_id"] == fit_id for e in progress)
    assert len(streamed) >= 3
    assert all(m["faces"] is None for m in streamed)  # the topology never changed
    assert all(m["vertices"].shape == vertices.shape for m in streamed)
    assert [m["iteration"] for m in streamed] == sorted(m["iteration"] for m in streamed)
    assert done["vertices"].shape == vertices.shape and done["faces"].shape == faces.shape
    assert done["metrics"]["mean_fit_iou"] > progress[0]["mean_iou"] + 0.2
    assert done["metrics"]["mean_fit_iou"] > 0.7
    assert done["metrics"]["iterations"] == 40


def test_cancel_returns_the_last_vertices_within_a_second_and_a_new_fit_runs(backend, scene):
    vertices, faces, views = scene
    fit_id = backend.start_fit(vertices, faces, views,
                               {"iterations": 100000, "stream_every": 1, "device": "cpu",
                                # short iterations: cancel takes effect between two
                                "views_per_step": 2})
    deadline = time.monotonic() + 30
    while backend.latest_vertices() is None:  # wait until it is really iterating
        backend.poll()
        assert time.monotonic() < deadline, "no vertices streamed"
        time.sleep(0.02)
    start = time.monotonic()
    backend.cancel()
    events, _ = run_until_done(backend, fit_id, limit=5)
    assert time.monotonic() - start < 1.0
    done = events[-1]
    assert done["status"] == "cancelled" and done["vertices"].shape == vertices.shape
    assert not backend.busy
    # The same process takes the next fit.
    fit_id = backend.start_fit(vertices, faces, views, {"iterations": 3, "device": "cpu"})
    done = backend.wait_done(timeout=60)
    assert (done["fit_id"], done["status"], done["metrics"]["iterations"]) == (fit_id, "done", 3)


def test_a_second_fit_while_one_runs_is_refused_by_the_client(backend, scene):
    vertices, faces, views = scene
    backend.start_fit(vertices, faces, views, {"iterations": 100000, "device": "cpu"})
    with pytest.raises(BackendError, match="still running"):
        backend.start_fit(vertices, faces, views, {})
    backend.cancel()
    assert backend.wait_done(timeout=30)["status"] == "cancelled"


def test_bad_options_fail_the_fit_not_the_backend(backend, scene):
    vertices, faces, views = scene
    backend.start_fit(vertices, faces, views, {"iterations": 5, "no_such_option": 1})
    with pytest.raises(FitFailedError, match="unknown fit options.*no_such_option"):
        backend.wait_done(timeout=30)
    assert not backend.busy
    backend.start_fit(vertices, faces, views, {"iterations": 2, "device": "cpu"})
    assert backend.wait_done(timeout=60)["status"] == "done"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_an_error_not_a_fallback(backend, scene):
    vertices, faces, views = scene
    backend.start_fit(vertices, faces, views, {"iterations": 5, "device": "cuda"})
    with pytest.raises(FitFailedError, match="cuda.*no CUDA GPU"):
        backend.wait_done(timeout=30)


def test_data_the_wire_cannot_carry_is_refused_before_sending(backend, scene):
    vertices, faces, views = scene
    with pytest.raises(ValueError, match="cannot send"):
        backend.start_fit(vertices.astype(object), faces, views, {})
    assert not backend.busy


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_killed_backend_is_reported_within_two_seconds(scene):
    vertices, faces, views = scene
    client = BackendClient(BACKEND, timeout=20)
    try:
        client.start()
        client.start_fit(vertices, faces, views, {"iterations": 100000, "device": "cpu"})
        while not client.poll():  # wait for the first progress
            time.sleep(0.02)
        os.kill(client.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(BackendError) as info:
            while time.monotonic() - start < 5:
                client.poll()
                time.sleep(0.02)
        assert time.monotonic() - start < 2.0
        assert "killed by signal SIGKILL while running fit 1" in str(info.value)
        with pytest.raises(BackendError, match="SIGKILL"):  # and it stays failed
            client.poll()
    finally:
        client.shutdown()


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_backend_that_stops_answering_is_reported_and_stopped():
    # Margins wide enough for a loaded machine: a heartbeat every 0.3 s, silence for 2 s
    # counts as hung.
    client = BackendClient(BACKEND + ["--heartbeat", "0.3"], timeout=2.0)
    try:
        client.start()
        time.sleep(2.5)  # idle for longer than the timeout, but heartbeats keep it alive
        assert client.poll() == []
        os.kill(client.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(BackendError, match="not answered for 2 s") as info:
            while time.monotonic() - start < 15:
                client.poll()
                time.sleep(0.05)
        assert time.monotonic() - start < 2.0 + 2.0
        assert "hung" in str(info.value)
        assert client._process.poll() is not None  # it was killed, not left stopped
    finally:
        client.shutdown()


def test_a_backend_python_without_torch_says_what_to_install(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    client = BackendClient(default_backend_command(python), timeout=20)
    with pytest.raises(BackendError) as info:
        client.start()
    text = str(info.value)
    assert "exited with code 3 before it was ready" in text
    assert "lacks numpy, torch, scikit-image, scipy" in text
    assert f'"{python}" -m pip install "numpy' in text


def test_a_missing_interpreter_is_a_clear_error(tmp_path):
    client = BackendClient(default_backend_command(str(tmp_path / "no-python")))
    with pytest.raises(BackendError, match="cannot start the backend.*preferences"):
        client.start()


def test_shutdown_ends_the_process_cleanly():
    client = BackendClient(BACKEND, timeout=20)
    client.start()
    client.shutdown()
    assert client._process.returncode == 0
    with pytest.raises(BackendError, match="shut down"):
        client.poll()


# -- fake backends that misbehave -----------------------------------------------------------

FAKE_PRELUDE = """
import sys, time
import numpy as np
from backend.core import protocol
out = sys.stdout.buffer
def hello(version=protocol.PROTOCOL_VERSION):
    protocol.write_frame(out, {"type": "hello", "protocol": version, "backend_version": "x",
        "python": "3", "torch": "0", "cupy": None, "device": "cpu", "cuda_available": False,
        "gpu_name": None, "pid": 0})
"""


def fake_backend(body: str, timeout: float = 5.0) -> BackendClient:
    code = FAKE_PRELUDE + textwrap.dedent(body)
    return BackendClient([sys.executable, "-c", code], timeout=timeout)


def expect_failure(client, match: str, within: float = 5.0) -> str:
    """Start the client and poll it until it raises; returns the error's text."""
    start = time.monotonic()
    try:
        with pytest.raises(BackendError, match=match) as info:
            client.start()
            while time.monotonic() - start < within + 5:
                client.poll()
                time.sleep(0.02)
        assert time.monotonic() - start < within
        return str(info.value)
    finally:
        client.shutdown()


def test_another_protocol_version_is_detected():
    client = fake_backend("""
        protocol.write_frame(out, {"type": "shutdown"})  # framed as version 1...
        out.write(protocol.encode_frame({"type": "shutdown"}, version=9)); out.flush()
        time.sleep(30)
    """)
    text = expect_failure(client, "protocol version 9")
    assert "different releases" in text


def test_a_hello_that_claims_another_version_is_detected():
    client = fake_backend("hello(version=2); time.sleep(30)")
    expect_failure(client, "protocol version 2, this add-on 1")


@pytest.mark.parametrize("body, match", [
    ("out.write(b'Hello from a print() that should have gone to stderr\\n'); out.flush();"
     "time.sleep(30)", "cannot read.*not a softras-blender frame"),
    ("hello(); data = protocol.encode_frame({'type': 'cancel', 'fit_id': np.zeros(99)});"
     "out.write(data[:-20]); out.flush()", "cannot read.*truncated frame"),
    ("hello(); out.write(protocol.encode_frame({'type': 'cancel', 'fit_id': 1})[:30]);"
     "out.flush(); time.sleep(30)", "not answered for 2 s"),
    ("import struct; out.write(struct.pack('<4sHHIQ', b'SRBF', 1, 0, 10, 1 << 45)); out.flush();"
     "time.sleep(30)", "cannot read.*exceeds"),
    ("sys.stderr.write('Traceback: something broke\\n'); sys.exit(7)",
     "exited with code 7 before it was ready.*something broke"),
], ids=["garbage", "truncated-then-exit", "truncated-then-silent", "oversized", "crash"])
def test_broken_output_from_the_backend_is_a_clear_error_without_hanging(body, match):
    client = fake_backend(body, timeout=2.0)
    expect_failure(client, "(?s)" + match, within=4.0)
    assert client._process.poll() is not None  # never left running


def test_the_newest_vertices_win_when_the_caller_polls_slowly():
    client = fake_backend("""
        hello()
        protocol.read_frame(sys.stdin.buffer)  # the start_fit
        for i in range(200):
            faces = np.zeros((1, 3), np.int32) if i == 0 else None
            protocol.write_frame(out, {"type": "vertices", "fit_id": 1, "iteration": i,
                                       "vertices": np.full((1000, 3), i, np.float32),
                                       "faces": faces})
            protocol.write_frame(out, {"type": "progress", "fit_id": 1, "iteration": i,
                "iterations": 200, "losses": {}, "mean_iou": 0.0, "view_iou": [],
                "elapsed": 0.0})
        protocol.write_frame(out, {"type": "heartbeat", "busy": True, "fit_id": 1, "uptime": 0})
        sys.stdin.buffer.read()
    """)
    try:
        client.start()
        client.start_fit(None, None, [], {})
        time.sleep(1.0)  # everything has arrived meanwhile
        events = client.poll()
        assert [(e["type"], e["iteration"]) for e in events] == [("progress", 199)]
        mesh = client.latest_mesh()
        assert mesh["iteration"] == 199 and np.all(mesh["vertices"] == 199)
        assert mesh["faces"] is not None  # the topology change of iteration 0 is kept
        assert client.latest_mesh() is None
    finally:
        client.shutdown()
