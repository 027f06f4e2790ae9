"""The backend's service loop: fit requests in, progress and meshes out, over two pipes.

``python -m backend serve`` runs `Service` on stdin/stdout (see backend/__main__.py);
the frames are those of `backend.core.protocol` and docs/protocol.md lists the messages.

Threads:
- the main thread reads frames (start_fit, cancel, shutdown) and never blocks on a fit;
- a worker thread runs one job at a time (a `backend.fit.fitting.fit`, a segment request or
  a `backend.sfm.solve_cameras`); cancel sets the event its ``should_stop`` (a solve's
  ``should_cancel``) polls, so the same process can start another job afterwards;
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

from .. import __version__
from ..core import messages, threads
from ..core.protocol import (
    PROTOCOL_VERSION,
    MessageError,
    ProtocolError,
    frame_chunks,
    read_frame,
    write_chunks,
)
from .exit_codes import EXIT_OK, EXIT_PROTOCOL_ERROR, EXIT_STARTUP_ERROR

log = logging.getLogger("backend.process.service")


class Outbox:
    """What the writer thread sends next; thread-safe.

    Control messages keep their order; progress and vertices are one-slot
    mailboxes (latest wins). A vertices message that replaces an unsent one
    inherits its faces when it has none (`messages.newest_vertices`), so a topology
    change is never lost.
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
            if self._vertices is not None:
                self.replaced_vertices += 1
            self._vertices = messages.newest_vertices(self._vertices, message)
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
            self.outbox.send(messages.error(
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
                self.outbox.send(messages.error(None, f"bad message from the client: {exc}",
                                                kind="protocol", fatal=False))
                continue
            except ProtocolError as exc:
                log.error("protocol error, shutting down: %s", exc)
                self.outbox.send(messages.error(
                    None, f"The backend received a broken frame and stopped: {exc}",
                    kind="protocol", fatal=True))
                return EXIT_PROTOCOL_ERROR
            if message is None:
                log.info("input closed; exiting")
                return EXIT_OK
            kind = message["type"]
            if kind == "start_fit":
                self._start_fit(message)
            elif kind == "segment":
                self._start_segment(message)
            elif kind == "solve_cameras":
                self._start_solve(message)
            elif kind == "cancel":
                self._cancel(message["fit_id"])
            elif kind == "shutdown":
                log.info("shutdown requested")
                return EXIT_OK
            else:
                self.outbox.send(messages.error(
                    None, f"the backend does not accept {kind!r} messages", kind="protocol",
                    fatal=False))

    def _cancel(self, fit_id) -> None:
        worker = self._worker
        if worker is not None and worker.is_alive() and fit_id in (None, self._fit_id):
            log.info("cancelling fit %s", self._fit_id)
            self._stop.set()
        else:
            log.info("cancel for fit %s ignored: it is not running", fit_id)

    def _idle(self, fit_id) -> bool:
        """True when no job (fit or segment) runs; else says so to the client."""
        if self._worker is not None:
            if not self._finished.is_set():
                self.outbox.send(messages.error(
                    fit_id, f"fit {self._fit_id} is still running: cancel it and wait for its "
                    "'done' message before starting another", kind="busy", fatal=False))
                return False
            self._worker.join()  # it has sent its last message and is exiting
        return True

    def _launch(self, fit_id, job, args: tuple) -> None:
        """Run ``job(fit_id, *args, stop)`` on the worker thread; its return value is the
        job's last message."""
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._fit_id = fit_id
        self._iteration = 0
        with self._stats_lock:
            self._stats = _new_stats()
        self._worker = threading.Thread(
            target=self._run_job, args=(job, (fit_id, *args, self._stop), self._finished),
            name=f"fit-{fit_id}", daemon=True)
        self._worker.start()

    def _start_fit(self, message: dict) -> None:
        fit_id = message["fit_id"]
        if not self._idle(fit_id):
            return
        fitting = self._fitting
        try:
            request = messages.parse_start_fit(message)
            options = fitting.FitOptions.from_dict(request.options)
            fitting.resolve_device(options.device)
            silhouettes = _silhouette_request(request.silhouettes)
        except ValueError as exc:
            self.outbox.send(messages.error(fit_id, str(exc), kind="fit", fatal=False))
            return
        log.info("fit %s: %d views, %s, device %s", fit_id, len(request.views),
                 "visual hull start" if request.vertices is None
                 else f"{len(request.vertices)} vertices", options.device)
        self._launch(fit_id, self._fit_outcome, (request, options, silhouettes))

    def _start_segment(self, message: dict) -> None:
        fit_id = message["fit_id"]
        if not self._idle(fit_id):
            return
        try:
            request = messages.parse_segment(message)
            silhouettes = import_module("backend.segment.stage").SilhouetteRequest.from_dict(
                request.silhouettes)
        except ValueError as exc:
            self.outbox.send(messages.error(fit_id, str(exc), kind="fit", fatal=False))
            return
        log.info("segment %s: %d views, mode %s", fit_id, len(request.views), silhouettes.mode)
        self._launch(fit_id, self._segment_outcome, (request.views, silhouettes))

    def _start_solve(self, message: dict) -> None:
        fit_id = message["fit_id"]
        if not self._idle(fit_id):
            return
        try:
            request = messages.parse_solve_cameras(message)
        except ValueError as exc:
            self.outbox.send(messages.error(fit_id, str(exc), kind="fit", fatal=False))
            return
        log.info("solve %s: cameras of %s, %s matching", fit_id, request.images,
                 request.ordering)
        self._launch(fit_id, self._solve_outcome, (request,))

    # -- worker thread -----------------------------------------------------------------

    def _run_job(self, job, args: tuple, finished: threading.Event) -> None:
        try:
            self.outbox.finish(job(*args))
        finally:
            finished.set()

    def _segment(self, fit_id, views, silhouettes):
        """The silhouettes stage (`backend.segment.stage.segment_views`), posting a stage
        message per view."""
        stage = import_module("backend.segment.stage")

        def on_view(k: int, n: int) -> None:
            self.outbox.send(messages.stage(fit_id, "silhouettes", k, n))

        self.outbox.send(messages.stage(fit_id, "silhouettes", 0, len(views)))
        return stage.segment_views(views, silhouettes, on_view)

    def _segment_outcome(self, fit_id, views, silhouettes, stop) -> dict:
        """Run a segment request; its masks or error message."""
        try:
            outcome = self._segment(fit_id, views, silhouettes)
        except ValueError as exc:
            return messages.error(fit_id, str(exc), kind="fit", fatal=False)
        except Exception as exc:
            log.exception("segment %s failed", fit_id)
            return messages.error(fit_id, f"Finding the silhouettes failed: "
                                  f"{type(exc).__name__}: {exc}", kind="internal", fatal=False)
        return messages.masks(fit_id, outcome.names, outcome.masks, outcome.report())

    def _solve_outcome(self, fit_id, request, stop) -> dict:
        """Run a solve_cameras request (`backend.sfm.solve_cameras`, in child processes a
        cancel stops); writes the COLMAP model to ``request.output``. Its cameras or error
        message."""
        sfm = import_module("backend.sfm")

        def on_progress(stage: str, fraction: float, text: str) -> None:
            self.outbox.post_progress(messages.solve_progress(fit_id, stage, fraction, text))

        try:
            result = sfm.solve_cameras(request.images, ordering=request.ordering, up=request.up,
                                       known_distance=request.known_distance,
                                       on_progress=on_progress, should_cancel=stop.is_set)
            model = sfm.write_colmap_model(result, request.output)
        except sfm.SolveCancelled as exc:
            log.info("solve %s: %s", fit_id, exc)
            return messages.cameras_cancelled(fit_id, exc)
        except sfm.PycolmapMissing as exc:
            return messages.error(fit_id, str(exc), kind="missing_dependency", fatal=False)
        except (ValueError, OSError) as exc:  # SfmError is a ValueError
            log.info("solve %s rejected: %s", fit_id, exc)
            return messages.error(fit_id, f"Solving the cameras failed: {exc}", kind="fit",
                                  fatal=False)
        except Exception as exc:
            log.exception("solve %s failed", fit_id)
            return messages.error(fit_id, f"Solving the cameras failed: {type(exc).__name__}: "
                                  f"{exc} (the backend log has the details)", kind="internal",
                                  fatal=False)
        log.info("solve %s: %d cameras, %d photos left out", fit_id, len(result.cameras),
                 len(result.unregistered))
        return messages.cameras_solved(fit_id, result, str(model))

    def _fit_outcome(self, fit_id, request, options, silhouettes, stop) -> dict:
        """Run one fit (after the silhouettes stage when the request asks for one); its
        done or error message."""
        fitting = self._fitting
        views, outcome = request.views, None
        if silhouettes is not None:
            try:
                outcome = self._segment(fit_id, views, silhouettes)
                views = import_module("backend.segment.stage").fit_views(
                    views, outcome, silhouettes.keep_flagged)
            except ValueError as exc:
                return messages.error(fit_id, str(exc), kind="fit", fatal=False)
            except Exception as exc:
                log.exception("fit %s: the silhouettes stage failed", fit_id)
                return messages.error(fit_id, f"Finding the silhouettes failed: "
                                      f"{type(exc).__name__}: {exc}", kind="internal",
                                      fatal=False)
            for check in outcome.flagged():
                log.info("fit %s: %s", fit_id, check.reason)
        fit_views = [fitting.View(v.camera, v.image, v.name, v.held_out) for v in views]

        def on_progress(p) -> None:
            start = time.perf_counter()
            self._iteration = p.iteration
            self.outbox.post_progress(messages.progress(fit_id, p))
            if p.vertices is not None:
                self.outbox.post_vertices(messages.vertices(fit_id, p.iteration, p.vertices,
                                                            p.faces))
            with self._stats_lock:
                self._stats["post_seconds"] += time.perf_counter() - start

        try:
            result = fitting.fit(fit_views, request.vertices, request.faces, options,
                                 on_progress=on_progress, should_stop=stop.is_set)
            log.info("fit %s %s after %d iterations", fit_id, result.status, result.iterations)
            if outcome is None:
                return messages.done(fit_id, result)
            _write_sheet(silhouettes, request.views, outcome, result)
            return messages.done(fit_id, result, outcome.report())
        except fitting.FitError as exc:
            log.info("fit %s rejected: %s", fit_id, exc)
            return messages.error(fit_id, str(exc), kind="fit", fatal=False)
        except Exception as exc:
            log.exception("fit %s failed", fit_id)
            return messages.error(
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
                    chunks = frame_chunks(messages.error(
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
        return messages.heartbeat(worker is not None and worker.is_alive(), self._fit_id,
                                  self._iteration, time.monotonic() - self._started)


def warm_up(device: str) -> None:
    """Load, while the client prepares its first request, what the first fit would
    otherwise wait for: torch.optim's lazy import of torch._dynamo (2 s on a 2-core
    CPU) and the compiled rasterizer: the CUDA kernels on a GPU, else the CPU passes
    (compiled by Numba on a machine's first run, then loaded from its cache). A failure
    here is only logged: the fit meets it again and reports it."""
    try:
        import torch._dynamo  # noqa: F401

        if device == "cuda":
            from ..render.raster_cuda import load_kernels

            load_kernels()
        else:
            from ..render.raster_cpu import warm_up as warm_up_cpu

            warm_up_cpu()
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
        "threads": threads.in_effect(torch.get_num_threads()),
    }


def _silhouette_request(fields: dict | None):
    """`backend.segment.stage.SilhouetteRequest` of a request's silhouettes field; None
    when there is none, or its mode is "alpha" without a contact sheet to write (the
    images' alpha as it is: no stage)."""
    if fields is None or (fields.get("mode") == "alpha" and not fields.get("contact_sheet")):
        return None
    return import_module("backend.segment.stage").SilhouetteRequest.from_dict(fields)


def _write_sheet(silhouettes, views, outcome, result) -> None:
    """The contact sheet the request asked for (photo | mask | fitted outline)."""
    if silhouettes.contact_sheet:
        import_module("backend.segment.stage").write_fit_sheet(
            silhouettes.contact_sheet, views, outcome, result.vertices, result.faces)


def _new_stats() -> dict:
    return {"frames": 0, "vertex_frames": 0, "bytes": 0, "write_seconds": 0.0,
            "post_seconds": 0.0}
