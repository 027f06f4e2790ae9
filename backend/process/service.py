"""The backend's service loop: fit requests in, progress and meshes out, over two pipes.

``python -m backend serve`` runs `Service` on stdin/stdout (see backend/__main__.py);
the frames are those of `backend.core.protocol` and docs/protocol.md lists the messages.

Threads:
- the main thread reads frames (start_fit, cancel, shutdown) and never blocks on a fit;
- a worker thread runs one `backend.fit.fitting.fit` at a time; cancel sets the event its
  ``should_stop`` polls, so the same process can start another fit afterwards;
- a writer thread sends what the `Outbox` holds: control messages (hello, done, error)
  in order, plus one-slot mailboxes for the newest progress and the newest vertices.
  A slow reader therefore never builds a backlog: a newer mailbox entry replaces an
  unsent one. Vertices go out at most ``max_vertex_rate`` times per second, and a
  heartbeat whenever nothing was sent for ``heartbeat_interval`` seconds, so a
  silent backend is a hung one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from importlib import import_module
from typing import BinaryIO

import numpy as np

from .. import __version__
from ..core.camera import CameraMatrices
from ..core.protocol import (
    PROTOCOL_VERSION,
    MessageError,
    ProtocolError,
    frame_chunks,
    read_frame,
    write_chunks,
)

log = logging.getLogger("backend.process.service")

EXIT_OK = 0
EXIT_PROTOCOL_ERROR = 2
EXIT_STARTUP_ERROR = 3  # missing or broken dependencies: nothing was fitted


class Outbox:
    """What the writer thread sends next; thread-safe.

    Control messages keep their order; progress and vertices are one-slot
    mailboxes (latest wins). A vertices message that replaces an unsent one
    inherits its faces when it has none, so a topology change is never lost.
    """

    def __init__(self, max_vertex_rate: float, heartbeat_interval: float, heartbeat):
        if not max_vertex_rate > 0:
            raise ValueError(f"max_vertex_rate must be positive, got {max_vertex_rate}")
        if not heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval}")
        self._cond = threading.Condition()
        self._control: deque[dict] = deque()
        self._progress: dict | None = None
        self._vertices: dict | None = None
        self._closed = False
        self._vertex_period = 1.0 / max_vertex_rate
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat = heartbeat
        self._last_sent = time.monotonic()
        self._last_vertices = -float("inf")
        self.replaced_vertices = 0  # unsent vertices superseded by newer ones

    def send(self, message: dict) -> None:
        with self._cond:
            self._control.append(message)
            self._cond.notify()

    def post_progress(self, message: dict) -> None:
        with self._cond:
            self._progress = message
            self._cond.notify()

    def post_vertices(self, message: dict) -> None:
        with self._cond:
            old = self._vertices
            if old is not None:
                self.replaced_vertices += 1
                if message.get("faces") is None and old.get("faces") is not None \
                        and old["fit_id"] == message["fit_id"]:
                    message = {**message, "faces": old["faces"]}
            self._vertices = message
            self._cond.notify()

    def finish(self, message: dict) -> None:
        """Queue a fit's last message (done/error); its unsent vertices are dropped,
        since the final message carries the final mesh."""
        with self._cond:
            if self._vertices is not None and self._vertices["fit_id"] == message["fit_id"]:
                self._vertices = None
            self._control.append(message)
            self._cond.notify()

    def close(self) -> None:
        """Send what is queued (not the vertices mailbox), then stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def next_batch(self) -> list[dict] | None:
        """Block until something is due; the messages to send, in order, or None once
        closed and drained. Progress comes before control messages, so a fit's last
        progress always precedes its done."""
        with self._cond:
            while True:
                now = time.monotonic()
                batch = []
                if self._progress is not None:
                    batch.append(self._progress)
                    self._progress = None
                vertex_wait = self._last_vertices + self._vertex_period - now
                if self._vertices is not None and vertex_wait <= 0 and not self._closed:
                    batch.append(self._vertices)
                    self._vertices = None
                    self._last_vertices = now
                batch.extend(self._control)
                self._control.clear()
                if not batch and self._closed:
                    return None
                if not batch and now - self._last_sent >= self._heartbeat_interval:
                    batch.append(self._heartbeat())
                if batch:
                    self._last_sent = now
                    return batch
                timeout = self._last_sent + self._heartbeat_interval - now
                if self._vertices is not None:
                    timeout = min(timeout, vertex_wait)
                self._cond.wait(max(timeout, 1e-3))


class Service:
    """One backend session on a pair of binary streams.

    reader, writer: blocking binary streams (the process' stdin and stdout).
    fitting: the module with ``fit``, ``View``, ``FitOptions``, ``FitError`` and
        ``resolve_device`` (default `backend.fit.fitting`, imported by `run`); tests of the
        transport may pass a stand-in.
    heartbeat_interval: seconds of silence after which a heartbeat is sent.
    max_vertex_rate: vertices messages per second at most.
    """

    def __init__(
        self,
        reader: BinaryIO,
        writer: BinaryIO,
        fitting=None,
        heartbeat_interval: float = 1.0,
        max_vertex_rate: float = 10.0,
    ):
        self._reader = reader
        self._writer = writer
        self._fitting = fitting
        self._started = time.monotonic()
        self.outbox = Outbox(max_vertex_rate, heartbeat_interval, self._heartbeat)
        self._writer_thread = threading.Thread(target=self._write_loop, name="backend-writer",
                                               daemon=True)
        self._write_failed = threading.Event()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._fit_id = None
        self._iteration = 0
        self._stats_lock = threading.Lock()
        self._stats = _new_stats()

    # -- main thread -------------------------------------------------------------------

    def run(self) -> int:
        """Serve until shutdown or end of input; returns the process exit code."""
        self._writer_thread.start()
        try:
            code = self._serve()
        finally:
            self._stop.set()
            if self._worker is not None:
                self._worker.join(timeout=10.0)
                if self._worker.is_alive():
                    log.warning("the fit did not stop within 10 s; exiting anyway")
            self.outbox.close()
            self._writer_thread.join(timeout=10.0)
        return code

    def _serve(self) -> int:
        try:
            if self._fitting is None:
                self._fitting = import_module("backend.fit.fitting")
            hello = backend_info(self._fitting)
        except Exception as exc:  # an installed but broken torch/CuPy, a bad CUDA driver...
            log.exception("backend start-up failed")
            self.outbox.send(error_message(
                None, f"The backend could not start: {type(exc).__name__}: {exc}. "
                "Check that torch (and CuPy, for the GPU) import in the backend's Python.",
                kind="startup", fatal=True))
            return EXIT_STARTUP_ERROR
        self.outbox.send(hello)
        log.info("ready: protocol %d, torch %s, device %s%s", PROTOCOL_VERSION, hello["torch"],
                 hello["device"], f" ({hello['gpu_name']})" if hello["gpu_name"] else "")
        threading.Thread(target=warm_up, args=(hello["device"],), name="warm-up",
                         daemon=True).start()
        while True:
            try:
                message = read_frame(self._reader)
            except MessageError as exc:  # the frame was read whole: the stream is in sync
                log.warning("rejected a message: %s", exc)
                self.outbox.send(error_message(None, f"bad message from the client: {exc}",
                                               kind="protocol", fatal=False))
                continue
            except ProtocolError as exc:
                log.error("protocol error, shutting down: %s", exc)
                self.outbox.send(error_message(
                    None, f"The backend received a broken frame and stopped: {exc}",
                    kind="protocol", fatal=True))
                return EXIT_PROTOCOL_ERROR
            if message is None:
                log.info("input closed; exiting")
                return EXIT_OK
            kind = message["type"]
            if kind == "start_fit":
                self._start_fit(message)
            elif kind == "cancel":
                self._cancel(message["fit_id"])
            elif kind == "shutdown":
                log.info("shutdown requested")
                return EXIT_OK
            else:
                self.outbox.send(error_message(
                    None, f"the backend does not accept {kind!r} messages", kind="protocol",
                    fatal=False))

    def _cancel(self, fit_id) -> None:
        worker = self._worker
        if worker is not None and worker.is_alive() and fit_id in (None, self._fit_id):
            log.info("cancelling fit %s", self._fit_id)
            self._stop.set()
        else:
            log.info("cancel for fit %s ignored: it is not running", fit_id)

    def _start_fit(self, message: dict) -> None:
        fit_id = message["fit_id"]
        if self._worker is not None:
            if not self._finished.is_set():
                self.outbox.send(error_message(
                    fit_id, f"fit {self._fit_id} is still running: cancel it and wait for its "
                    "'done' message before starting another", kind="busy", fatal=False))
                return
            self._worker.join()  # it has sent its last message and is exiting
        fitting = self._fitting
        try:
            views = [_parse_view(fitting, i, v) for i, v in enumerate(message["views"])]
            options = fitting.FitOptions.from_dict(dict(message["options"] or {}))
            fitting.resolve_device(options.device)
            vertices = _optional_array(message["vertices"], "vertices")
            faces = _optional_array(message["faces"], "faces")
        except (ValueError, KeyError, TypeError) as exc:
            text = str(exc) if isinstance(exc, ValueError) else f"malformed fit request: {exc!r}"
            self.outbox.send(error_message(fit_id, text, kind="fit", fatal=False))
            return
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._fit_id = fit_id
        self._iteration = 0
        with self._stats_lock:
            self._stats = _new_stats()
        log.info("fit %s: %d views, %s, device %s", fit_id, len(views),
                 "visual hull start" if vertices is None else f"{len(vertices)} vertices",
                 options.device)
        self._worker = threading.Thread(
            target=self._run_fit,
            args=(fit_id, views, vertices, faces, options, self._stop, self._finished),
            name=f"fit-{fit_id}", daemon=True)
        self._worker.start()

    # -- worker thread -----------------------------------------------------------------

    def _run_fit(self, fit_id, views, vertices, faces, options, stop: threading.Event,
                 finished: threading.Event) -> None:
        try:
            self.outbox.finish(self._fit_outcome(fit_id, views, vertices, faces, options, stop))
        finally:
            finished.set()

    def _fit_outcome(self, fit_id, views, vertices, faces, options, stop) -> dict:
        """Run one fit; its done or error message."""
        fitting = self._fitting

        def on_progress(p) -> None:
            start = time.perf_counter()
            self._iteration = p.iteration
            self.outbox.post_progress(progress_message(fit_id, p))
            if p.vertices is not None:
                self.outbox.post_vertices({
                    "type": "vertices", "fit_id": fit_id, "iteration": int(p.iteration),
                    # Copies: the fit keeps updating its own buffers in place.
                    "vertices": np.array(p.vertices, dtype=np.float32),
                    "faces": None if p.faces is None else np.array(p.faces, dtype=np.int32),
                })
            with self._stats_lock:
                self._stats["post_seconds"] += time.perf_counter() - start

        try:
            result = fitting.fit(views, vertices, faces, options, on_progress=on_progress,
                                 should_stop=stop.is_set)
            log.info("fit %s %s after %d iterations", fit_id, result.status, result.iterations)
            return done_message(fit_id, result)
        except fitting.FitError as exc:
            log.info("fit %s rejected: %s", fit_id, exc)
            return error_message(fit_id, str(exc), kind="fit", fatal=False)
        except Exception as exc:
            log.exception("fit %s failed", fit_id)
            return error_message(
                fit_id, f"The fit failed: {type(exc).__name__}: {exc} (the backend log has the "
                "details)", kind="internal", fatal=False)

    # -- writer thread -----------------------------------------------------------------

    def _write_loop(self) -> None:
        while (batch := self.outbox.next_batch()) is not None:
            for message in batch:
                if message["type"] == "done":
                    with self._stats_lock:
                        message["metrics"]["protocol"] = dict(self._stats)
                start = time.perf_counter()
                try:
                    chunks = frame_chunks(message)
                except ProtocolError as exc:  # a result the wire cannot carry: a bug here
                    log.error("cannot encode a %r message: %s", message["type"], exc)
                    chunks = frame_chunks(error_message(
                        message.get("fit_id"), f"The backend could not send its "
                        f"{message['type']!r} message: {exc}", kind="internal", fatal=False))
                try:
                    size = write_chunks(self._writer, chunks)
                except (OSError, ValueError) as exc:  # the client went away
                    log.error("cannot write to the client (%s); stopping", exc)
                    self._write_failed.set()
                    self._stop.set()
                    return
                with self._stats_lock:
                    self._stats["frames"] += 1
                    self._stats["bytes"] += size
                    self._stats["write_seconds"] += time.perf_counter() - start
                    if message["type"] == "vertices":
                        self._stats["vertex_frames"] += 1

    def _heartbeat(self) -> dict:
        worker = self._worker
        return {"type": "heartbeat", "busy": worker is not None and worker.is_alive(),
                "fit_id": self._fit_id, "iteration": self._iteration,
                "uptime": time.monotonic() - self._started}


def warm_up(device: str) -> None:
    """Load, while the client prepares its first request, what the first fit would
    otherwise wait for: torch.optim's lazy import of torch._dynamo (2 s on a 2-core
    CPU) and, on a GPU, the compiled kernels. A failure here is only logged: the fit
    meets it again and reports it."""
    try:
        import torch._dynamo  # noqa: F401

        if device == "cuda":
            from ..render.raster_cuda import load_kernels

            load_kernels()
    except Exception:
        log.exception("warm-up failed")


def backend_info(fitting) -> dict:
    """The hello message: versions, the device "auto" picks and the GPU's name."""
    import torch

    try:
        import cupy

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = None
    except Exception as exc:  # installed but unusable (driver, CUDA libraries)
        cupy_version = f"unusable: {type(exc).__name__}: {exc}"
    cuda = torch.cuda.is_available()
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "backend_version": __version__,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "cupy": cupy_version,
        "device": fitting.resolve_device("auto"),
        "cuda_available": cuda,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "pid": os.getpid(),
    }


def progress_message(fit_id, p) -> dict:
    """A `backend.fit.fitting.Progress` as a progress message (its vertices go separately)."""
    return {
        "type": "progress", "fit_id": fit_id, "iteration": int(p.iteration),
        "iterations": int(p.iterations),
        "losses": {str(k): float(v) for k, v in p.losses.items()},
        "mean_iou": float(p.mean_iou), "view_iou": [float(x) for x in p.view_iou],
        "elapsed": float(p.elapsed),
    }


def done_message(fit_id, r) -> dict:
    """A `backend.fit.fitting.FitResult` as a done message."""
    return {
        "type": "done", "fit_id": fit_id, "status": r.status, "message": r.message,
        "vertices": np.asarray(r.vertices, dtype=np.float32),
        "faces": np.asarray(r.faces, dtype=np.int32),
        "colors": None if r.colors is None else np.asarray(r.colors, dtype=np.float32),
        "topology_changed": bool(r.topology_changed),
        "metrics": {
            "fit_iou": dict(r.fit_iou),
            "heldout_iou": dict(r.heldout_iou),
            "mean_fit_iou": float(r.mean_fit_iou),
            "loss_history": list(r.loss_history),
            "timing": dict(r.timing),
            "iterations": int(r.iterations),
            "device": str(r.device),
        },
    }


def error_message(fit_id, text: str, kind: str, fatal: bool) -> dict:
    """kind: "fit" (bad input, fix and retry), "busy", "internal", "protocol", "startup",
    "missing_dependency". fatal: the backend exits after sending it."""
    return {"type": "error", "fit_id": fit_id, "message": text, "kind": kind, "fatal": fatal}


def _new_stats() -> dict:
    return {"frames": 0, "vertex_frames": 0, "bytes": 0, "write_seconds": 0.0,
            "post_seconds": 0.0}


def _parse_view(fitting, index: int, view: dict):
    if not isinstance(view, dict):
        raise ValueError(f"view {index} must be an object with camera and image")
    image = view.get("image")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"view {index} ({view.get('name', '')!r}) has no image array")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype.kind == "f":
        image = image.astype(np.float32, copy=False)
    else:
        raise ValueError(f"view {index}'s image has dtype {image.dtype}: send float32 in [0, 1] "
                         "or uint8")
    return fitting.View(camera=CameraMatrices.from_dict(view["camera"]), image=image,
                        name=str(view.get("name", "")), held_out=bool(view.get("held_out", False)))


def _optional_array(value, name: str):
    if value is None or isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{name} must be an array or null, got {type(value).__name__}")
