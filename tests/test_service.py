"""The backend service (backend/process/service.py, backend/__main__.py).

The transport tests run `Service` in-process on real pipes with a stand-in fitting
module whose timing they control; the start-up tests run ``python -m backend serve``
in Pythons that lack its dependencies. End-to-end fits with the real engine are in
test_client.py.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backend.core.protocol import MAGIC, PROTOCOL_VERSION, encode_frame, read_frame, write_frame
from backend.process.service import EXIT_OK, EXIT_PROTOCOL_ERROR, Outbox, Service

REPO = Path(__file__).resolve().parent.parent
CAMERA = {"intrinsics": [[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]],
          "world_to_camera": np.eye(4).tolist(), "width": 32, "height": 32,
          "orthographic": False}


# -- a stand-in for backend.fit.fitting with controllable timing ---------------------------

class FakeFitError(ValueError):
    pass


@dataclass
class FakeView:
    camera: object
    image: np.ndarray
    name: str = ""
    held_out: bool = False


@dataclass
class FakeOptions:
    iterations: int = 20
    device: str = "auto"
    stream_every: int = 1
    delay: float = 0.0   # seconds per iteration
    crash: bool = False

    @staticmethod
    def from_dict(d: dict) -> FakeOptions:
        unknown = set(d) - set(FakeOptions.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fit option(s) {sorted(unknown)}")
        return FakeOptions(**d)


@dataclass
class FakeProgress:
    iteration: int
    iterations: int
    vertices: np.ndarray | None
    faces: np.ndarray | None = None
    losses: dict = field(default_factory=lambda: {"total": 1.0})
    mean_iou: float = 0.5
    view_iou: list = field(default_factory=lambda: [0.5])
    elapsed: float = 0.0


def fake_fit(views, vertices, faces, options, on_progress=None, should_stop=None):
    """Counts iterations; the streamed vertices are ONE buffer updated in place, equal
    to the iteration number, so a test can tell whether the service copied them."""
    if options.crash:
        raise RuntimeError("simulated bug")
    if not views:
        raise FakeFitError("no views given: add cameras with reference images")
    buffer = np.zeros((100, 3), np.float32)
    status, done = "done", 0
    for i in range(options.iterations):
        if should_stop():
            status = "cancelled"
            break
        buffer[:] = i
        done = i + 1
        if options.delay:
            time.sleep(options.delay)
        on_progress(FakeProgress(i, options.iterations,
                                 buffer if i % options.stream_every == 0 else None,
                                 faces=np.zeros((2, 3), np.int32) if i == 0 else None))
    return SimpleNamespace(
        vertices=buffer.copy(), faces=np.zeros((2, 3), np.int32), colors=None,
        topology_changed=False, fit_iou={"a": 0.9}, heldout_iou={}, mean_fit_iou=0.9,
        loss_history=[{"total": 1.0}], timing={"total": 0.1}, iterations=done, device="cpu",
        status=status, message="", camera_corrections=[])


def fake_resolve_device(name):
    if name == "cuda":
        raise FakeFitError("device 'cuda' was asked for but there is no CUDA GPU")
    return "cpu"


FAKE_FITTING = SimpleNamespace(fit=fake_fit, View=FakeView, FitOptions=FakeOptions,
                               FitError=FakeFitError, resolve_device=fake_resolve_device)


class Harness:
    """A Service on two real pipes, run on a thread; the test plays the client."""

    def __init__(self, **kwargs):
        c2s_r, self.c2s_w = os.pipe()
        self.s2c_r, s2c_w = os.pipe()
        self.to_service = os.fdopen(self.c2s_w, "wb")
        self.from_service = os.fdopen(self.s2c_r, "rb")
        kwargs.setdefault("fitting", FAKE_FITTING)
        self.service = Service(os.fdopen(c2s_r, "rb"), os.fdopen(s2c_w, "wb"), **kwargs)
        self.code = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.code = self.service.run()
        self.service._writer.close()

    def send(self, message):
        write_frame(self.to_service, message)

    def read(self, skip=("heartbeat",)):
        while True:
            message = read_frame(self.from_service)
            if message is None or message["type"] not in skip:
                return message

    def read_until(self, kind):
        seen = []
        while True:
            message = self.read()
            assert message is not None, f"stream ended before a {kind!r} message: {seen}"
            seen.append(message)
            if message["type"] == kind:
                return seen

    def close(self):
        try:
            self.to_service.close()
        except OSError:
            pass
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the service did not stop"
        self.from_service.close()


@pytest.fixture
def harness():
    created = []

    def make(**kwargs):
        h = Harness(**kwargs)
        created.append(h)
        assert h.read()["type"] == "hello"
        return h

    yield make
    for h in created:
        h.close()


def fit_request(fit_id=1, **options):
    return {"type": "start_fit", "fit_id": fit_id, "vertices": None, "faces": None,
            "views": [{"name": "a", "camera": CAMERA, "held_out": False,
                       "image": np.zeros((32, 32, 4), np.uint8)}],
            "options": options}


# -- Outbox ------------------------------------------------------------------------------

def test_outbox_keeps_only_the_newest_vertices_and_their_topology_change():
    outbox = Outbox(max_vertex_rate=1000, heartbeat_interval=60, heartbeat=dict)
    faces = np.zeros((1, 3), np.int32)
    outbox.post_vertices({"type": "vertices", "fit_id": 1, "iteration": 0, "faces": faces})
    for i in range(1, 100):
        outbox.post_vertices({"type": "vertices", "fit_id": 1, "iteration": i, "faces": None})
    batch = outbox.next_batch()
    assert [m["iteration"] for m in batch] == [99]
    assert batch[0]["faces"] is faces
    assert outbox.replaced_vertices == 99


def test_outbox_sends_vertices_at_most_at_the_given_rate():
    outbox = Outbox(max_vertex_rate=20, heartbeat_interval=60, heartbeat=dict)
    sent = []
    start = time.monotonic()
    while time.monotonic() - start < 0.5:
        outbox.post_vertices({"type": "vertices", "fit_id": 1, "faces": None})
        for _ in outbox.next_batch():
            sent.append(time.monotonic())
    assert 8 <= len(sent) <= 12
    assert min(np.diff(sent)) >= 0.045


def test_outbox_sends_a_heartbeat_when_idle_and_stops_when_closed():
    outbox = Outbox(max_vertex_rate=10, heartbeat_interval=0.05,
                    heartbeat=lambda: {"type": "heartbeat"})
    start = time.monotonic()
    assert outbox.next_batch() == [{"type": "heartbeat"}]
    assert 0.04 <= time.monotonic() - start < 1.0
    outbox.send({"type": "error"})
    outbox.close()
    assert outbox.next_batch() == [{"type": "error"}]
    assert outbox.next_batch() is None


def test_a_fits_last_message_drops_its_unsent_vertices_and_follows_its_progress():
    outbox = Outbox(max_vertex_rate=0.001, heartbeat_interval=60, heartbeat=dict)
    outbox.post_vertices({"type": "vertices", "fit_id": 1, "faces": None})
    assert [m["type"] for m in outbox.next_batch()] == ["vertices"]
    outbox.post_vertices({"type": "vertices", "fit_id": 1, "faces": None})  # rate-limited
    outbox.post_progress({"type": "progress", "fit_id": 1})
    outbox.finish({"type": "done", "fit_id": 1})
    assert [m["type"] for m in outbox.next_batch()] == ["progress", "done"]


# -- Service on pipes, stand-in fit ------------------------------------------------------

def test_hello_comes_first_and_names_versions_and_device():
    h = Harness(fitting=FAKE_FITTING)
    try:
        hello = h.read()
        assert hello["type"] == "hello"
        assert hello["protocol"] == PROTOCOL_VERSION
        assert hello["device"] == "cpu" and hello["pid"] == os.getpid()
        import torch

        assert hello["torch"] == torch.__version__
    finally:
        h.close()
    assert h.code == EXIT_OK


def test_a_slow_reader_gets_the_newest_vertices_without_a_backlog(harness):
    h = harness(max_vertex_rate=20)
    start = time.monotonic()
    h.send(fit_request(iterations=300, delay=0.005))
    time.sleep(1.0)  # the client is busy: the fit runs on meanwhile
    messages = h.read_until("done")
    elapsed = time.monotonic() - start
    vertices = [m for m in messages if m["type"] == "vertices"]
    # 300 iterations posted vertices; at most 20 per second went out.
    assert 1 <= len(vertices) <= elapsed * 20 + 2
    for m in vertices:  # copies taken when posted, not the fit's live buffer
        assert np.all(m["vertices"] == m["iteration"])
    assert vertices[0]["faces"] is not None  # the first (topology) message survived
    assert messages[-1]["status"] == "done" and messages[-1]["metrics"]["iterations"] == 300
    assert np.all(messages[-1]["vertices"] == 299)
    protocol_stats = messages[-1]["metrics"]["protocol"]
    assert protocol_stats["vertex_frames"] == len(vertices)


def test_cancel_stops_the_fit_and_a_new_fit_can_start(harness):
    h = harness()
    h.send(fit_request(1, iterations=100000, delay=0.001))
    assert h.read()["type"] in ("progress", "vertices")
    start = time.monotonic()
    h.send({"type": "cancel", "fit_id": 1})
    done = h.read_until("done")[-1]
    assert time.monotonic() - start < 1.0
    assert done["status"] == "cancelled" and done["fit_id"] == 1
    assert np.all(done["vertices"] == done["metrics"]["iterations"] - 1)
    h.send(fit_request(2, iterations=5))
    done = h.read_until("done")[-1]
    assert (done["fit_id"], done["status"], done["metrics"]["iterations"]) == (2, "done", 5)


def test_a_second_fit_while_one_runs_is_refused_not_queued(harness):
    h = harness()
    h.send(fit_request(1, iterations=100000, delay=0.001))
    h.send(fit_request(2))
    error = h.read_until("error")[-1]
    assert error["fit_id"] == 2 and error["kind"] == "busy" and not error["fatal"]
    assert "cancel" in error["message"]
    h.send({"type": "cancel", "fit_id": 1})
    assert h.read_until("done")[-1]["fit_id"] == 1


@pytest.mark.parametrize("request_, kind, text", [
    (fit_request(bogus_option=1), "fit", "unknown fit option"),
    (fit_request(device="cuda"), "fit", "no CUDA GPU"),
    ({**fit_request(), "views": []}, "fit", "no views given"),
    ({**fit_request(), "views": [{"name": "x", "camera": CAMERA}]}, "fit", "no image"),
    ({**fit_request(), "views": [{"image": np.zeros((2, 2, 4), np.float32)}]}, "fit",
     "malformed fit request"),
    ({**fit_request(), "views": [{"camera": CAMERA, "image": np.zeros((2, 2, 4), np.int64)}]},
     "fit", "dtype int64"),
    (fit_request(crash=True), "internal", "RuntimeError: simulated bug"),
    ({"type": "hello", "protocol": 1, "backend_version": "", "python": "", "torch": "",
      "cupy": None, "device": "", "cuda_available": False, "gpu_name": None, "pid": 0},
     "protocol", "does not accept 'hello'"),
], ids=["option", "cuda", "no-views", "no-image", "no-camera", "dtype", "crash", "hello"])
def test_bad_requests_get_an_error_and_the_service_goes_on(harness, request_, kind, text):
    h = harness()
    h.send(request_)
    error = h.read_until("error")[-1]
    assert error["kind"] == kind and not error["fatal"]
    assert text in error["message"]
    h.send(fit_request(7, iterations=3))
    assert h.read_until("done")[-1]["fit_id"] == 7


def test_a_bad_message_in_a_sound_frame_is_not_fatal(harness):
    h = harness()
    header = b'{"message": {"type": "run_shell", "cmd": "rm -rf /"}, "arrays": []}'
    h.to_service.write(struct.pack("<4sHHIQ", MAGIC, PROTOCOL_VERSION, 0, len(header), 0)
                       + header)
    h.to_service.flush()
    error = h.read_until("error")[-1]
    assert "unknown message type 'run_shell'" in error["message"] and not error["fatal"]
    h.send(fit_request(3, iterations=2))
    assert h.read_until("done")[-1]["fit_id"] == 3


@pytest.mark.parametrize("data, text", [
    (b"\x80\x04garbage that is no frame at all" * 4, "not a softras-blender frame"),
    (encode_frame(fit_request())[:200], "truncated"),
    (struct.pack("<4sHHIQ", MAGIC, PROTOCOL_VERSION, 0, 10, 1 << 40), "exceeds"),
    (encode_frame({"type": "shutdown"}, version=PROTOCOL_VERSION + 7), "version"),
], ids=["garbage", "truncated", "oversized", "version"])
def test_a_broken_frame_stops_the_service_with_a_clear_error(data, text):
    h = Harness(fitting=FAKE_FITTING)
    assert h.read()["type"] == "hello"
    h.to_service.write(data)
    h.to_service.close()  # the truncated case needs the end of the stream
    error = h.read_until("error")[-1]
    assert error["fatal"] and error["kind"] == "protocol"
    assert text in error["message"]
    assert h.read() is None
    h.thread.join(timeout=5)
    assert h.code == EXIT_PROTOCOL_ERROR


def test_closing_the_input_cancels_the_fit_and_exits_cleanly():
    h = Harness(fitting=FAKE_FITTING)
    assert h.read()["type"] == "hello"
    h.send(fit_request(iterations=100000, delay=0.001))
    h.to_service.close()
    done = h.read_until("done")[-1]
    assert done["status"] == "cancelled"
    h.thread.join(timeout=5)
    assert h.code == EXIT_OK


def test_heartbeats_flow_while_idle_and_while_fitting(harness):
    h = harness(heartbeat_interval=0.05)
    beats = [h.read(skip=()) for _ in range(3)]
    assert [b["type"] for b in beats] == ["heartbeat"] * 3
    assert not beats[0]["busy"]


# -- the real process in Pythons without its dependencies -------------------------------

@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A fresh virtual environment's Python: no numpy, no torch."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert subprocess.run([str(python), "-c", "import numpy"], capture_output=True).returncode
    return str(python)


def run_backend(python, extra_path=(), stdin=b""):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, extra_path)])
    return subprocess.run([python, "-m", "backend", "serve"], input=stdin, capture_output=True,
                          env=env, cwd=REPO, timeout=60)


def test_a_python_without_numpy_and_torch_is_told_what_to_install(bare_python):
    result = run_backend(bare_python)
    assert result.returncode == 3
    assert result.stdout == b""
    err = result.stderr.decode()
    assert "lacks numpy, torch" in err
    assert f'"{bare_python}" -m pip install "numpy' in err and '"torch==' in err


def test_a_python_with_numpy_but_no_torch_gets_an_error_frame(bare_python, tmp_path):
    # Only numpy is visible to this Python (its own folder, not the whole site-packages).
    import numpy

    site = Path(numpy.__file__).resolve().parent.parent
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (tmp_path / name).symlink_to(site / name)
    result = run_backend(bare_python, [tmp_path])
    assert result.returncode == 3
    error = decode_all(result.stdout)[0]
    assert error["type"] == "error" and error["kind"] == "missing_dependency" and error["fatal"]
    assert "lacks torch," in error["message"] and "numpy" not in error["message"].split(",")[0]
    assert '-m pip install "torch==' in error["message"]
    assert error["message"] in result.stderr.decode()


class MakeDirsOnUnpickle:
    """Creates a folder when unpickled: proof that nothing on the wire is unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def decode_all(data: bytes) -> list[dict]:
    import io

    stream = io.BytesIO(data)
    messages = []
    while (m := read_frame(stream)) is not None:
        messages.append(m)
    return messages


def test_the_backend_process_rejects_garbage_without_executing_it(tmp_path):
    """Real `python -m backend serve`: a pickle on its stdin is a protocol error."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "backend", "serve"],
                            input=pickle.dumps(MakeDirsOnUnpickle(tmp_path / "pwned")),
                            capture_output=True, env=env, cwd=REPO, timeout=120)
    messages = decode_all(result.stdout)
    assert [m["type"] for m in messages if m["type"] != "heartbeat"] == ["hello", "error"]
    assert "not a softras-blender frame" in messages[-1]["message"]
    assert result.returncode == EXIT_PROTOCOL_ERROR
    assert not (tmp_path / "pwned").exists()
