"""Start the fitting backend in its own process and talk to it without blocking Blender.

Standard library and numpy only (no bpy, no torch): Blender's Python runs this.

    client = BackendClient(default_backend_command(python))
    hello = client.start()                   # versions, device, GPU name, threads
    client.start_fit(vertices, faces, views, options)   # views: [messages.View]
    # on a timer:
    for event in client.poll():              # progress / done / error dicts, never blocks
        ...
    vertices = client.latest_vertices()      # newest streamed vertices or None
    client.cancel(); client.shutdown()

Threads: one reads frames from the backend's stdout (newest progress and vertices
kept in one-slot mailboxes, other messages queued), one drains its stderr into a
short tail for error reports, one writes requests to its stdin. `poll` raises
`BackendError` when the backend died (exit code or signal and its last log lines),
stopped answering (no frame, not even a heartbeat, for ``timeout`` seconds), or
spoke another protocol version.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

# backend/ is inside the add-on's folder (a symbolic link in a source checkout).
from .backend.core import messages, protocol

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40


class BackendError(RuntimeError):
    """The backend cannot go on: it could not start, died, hung or broke the protocol.
    The message says what happened and, where known, what to do."""


class FitFailedError(BackendError):
    """The backend rejected or failed one fit (bad input, no CUDA device...); the backend
    itself is fine and can take another fit."""


def backend_root() -> Path:
    """The folder that contains ``backend/``: the add-on's own folder when installed
    (build.py copies backend/ and kernels/ into it), the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent):
        if (folder / "backend" / "__main__.py").is_file():
            return folder
    raise BackendError(f"no backend/ folder next to {here}: the add-on is incomplete; "
                       "reinstall it from a zip made by build.py")


def default_backend_command(python: str | list[str], threads: int | None = None) -> list[str]:
    """``[python, "-m", "backend", "serve"]``, plus ``--threads N`` when ``threads`` is
    given (the backend's CPU threads, 0: its automatic choice); ``python`` may also be an
    argv prefix (``["ssh", "gpu-box", "python3"]``). `BackendClient` runs it in
    `backend_root()` with that folder on PYTHONPATH, so ``-m backend`` finds this
    add-on's backend."""
    prefix = [python] if isinstance(python, str | os.PathLike) else list(python)
    if not prefix or not str(prefix[0]).strip():
        raise ValueError("no Python given for the backend: set it in the add-on's preferences")
    command = [str(p) for p in prefix] + ["-m", "backend", "serve"]
    if threads is not None:
        if threads < 0:
            raise ValueError(f"the backend's CPU threads must be >= 0 (0: automatic), "
                             f"got {threads}")
        command += ["--threads", str(int(threads))]
    return command


class BackendClient:
    """One backend process and the fits it runs, one at a time.

    command: argv that starts the backend (see `default_backend_command`).
    env: its environment; None means this process' environment with `backend_root()`
        prepended to PYTHONPATH.
    cwd: its working directory; None means `backend_root()`.
    timeout: seconds without any frame (the backend sends a heartbeat every second
        when idle) after which it counts as hung and is stopped.
    max_frame_bytes: the largest frame accepted from the backend.
    """

    def __init__(self, command: list[str], env: dict | None = None, cwd: str | None = None,
                 timeout: float = 30.0, max_frame_bytes: int = protocol.MAX_FRAME_BYTES):
        if not command:
            raise ValueError("the backend command is empty")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.timeout = float(timeout)
        self.max_frame_bytes = max_frame_bytes
        self.hello: dict | None = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        self._progress: dict | None = None
        self._vertices: dict | None = None
        self._last_frame = 0.0
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._threads: list[threading.Thread] = []
        self._eof = False
        self._write_error: Exception | None = None
        self._fatal_message: str | None = None
        self._failure: BackendError | None = None
        self._stopping = False
        self._fit_ids = itertools.count(1)
        self.fit_id: int | None = None  # the running fit, None when idle

    # -- life cycle ----------------------------------------------------------------------

    def launch(self) -> None:
        """Start the process and its I/O threads without waiting for it (see `start`)."""
        if self._process is not None:
            raise BackendError("the backend was already started; make a new BackendClient")
        env = self.env
        if env is None:
            env = dict(os.environ)
            root = str(backend_root())
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        cwd = self.cwd if self.cwd is not None else str(backend_root())
        try:
            self._process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, cwd=cwd)
        except OSError as exc:
            raise BackendError(
                f"cannot start the backend with {' '.join(self.command)!r}: {exc}. Check the "
                "backend's Python in the add-on's preferences") from exc
        self._last_frame = time.monotonic()
        for target, name in ((self._read_loop, "reader"), (self._stderr_loop, "stderr"),
                             (self._write_loop, "writer")):
            thread = threading.Thread(target=target, name=f"softras-backend-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._stderr_thread = self._threads[1]

    def start(self) -> dict:
        """Start the backend and wait for its hello (versions, device, GPU name).

        Blocks while the backend imports torch (seconds); a backend that keeps
        sending heartbeats is waited for, a silent one for ``timeout`` seconds.
        Raises BackendError with the backend's own explanation when it cannot start
        (e.g. which packages its Python lacks and the pip command that installs them).
        """
        if self._process is None:
            self.launch()
        while self.hello is None:
            self._drain()
            if self.hello is None:
                self._check_health()
                time.sleep(0.02)
        return self.hello

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the backend to exit (a running fit is cancelled), wait up to ``timeout``
        seconds, then kill it. Safe to call more than once and after a failure."""
        process = self._process
        if process is None or self._stopping:
            return
        self._stopping = True
        self._outgoing.put(messages.shutdown())
        self._outgoing.put(None)  # then close its stdin
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("the backend did not exit within %.1f s; killing it", timeout)
            self._kill()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                stream.close()
            except OSError:
                pass

    close = shutdown

    def __enter__(self) -> BackendClient:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def busy(self) -> bool:
        """True from `start_fit` until its done or error event was polled."""
        return self.fit_id is not None

    # -- requests ------------------------------------------------------------------------

    def start_fit(self, vertices: np.ndarray | None, faces: np.ndarray | None,
                  views: list[messages.View], options: dict | None = None,
                  silhouettes: dict | None = None) -> int:
        """Send a fit request; returns its fit id. Never blocks.

        vertices: (V, 3) float32 initial mesh, or None for the visual hull (faces None too).
        faces: (F, 3) int32. views: the cameras and their (H, W, 4) float32 RGBA (or
        uint8) images. options: `backend.core.options.FitOptions` fields as a dict.
        silhouettes: `messages.silhouettes_settings` (the backend finds the silhouettes
        first), or None (the images' alpha). The arrays are sent from memory as they
        are: do not modify them afterwards.
        Raises BackendError if a fit is running or the backend is gone, ValueError for
        data that cannot be sent.
        """
        return self._send_job(lambda fit_id: messages.start_fit(
            fit_id, vertices, faces, views, options, silhouettes))

    def segment(self, views: list[messages.View], silhouettes: dict) -> int:
        """Ask for the views' silhouettes only; returns the request's id (a fit id). Its
        answer is a "masks" event ({"names", "masks", "silhouettes"}) or an error."""
        return self._send_job(lambda fit_id: messages.segment(fit_id, views, silhouettes))

    def solve_cameras(self, images, output: str, ordering: str = "auto", up="auto",
                      known_distance: float | None = None) -> int:
        """Ask for the cameras of a folder (or list) of photos; returns the request's id (a
        fit id). Its events: "solve_progress" ({"stage", "fraction", "message"}), then
        "cameras" ({"status": "solved" | "cancelled", "model": the COLMAP model folder
        written to ``output``, "registered", "unregistered", ...}) or an error."""
        return self._send_job(lambda fit_id: messages.solve_cameras(
            fit_id, images, output, ordering, up, known_distance))

    def _send_job(self, build) -> int:
        """Send ``build(fit_id)``, a request the backend answers with one last message."""
        self._require_running()
        if self.fit_id is not None:
            raise BackendError(f"fit {self.fit_id} is still running: cancel it and wait for "
                               "its done event first")
        fit_id = next(self._fit_ids)
        try:
            chunks = protocol.frame_chunks(build(fit_id))
        except protocol.ProtocolError as exc:
            raise ValueError(f"cannot send this request to the backend: {exc}") from exc
        with self._lock:
            self.fit_id = fit_id
            self._progress = None
            self._vertices = None
        self._outgoing.put(chunks)
        return fit_id

    def cancel(self) -> None:
        """Ask the running fit to stop; its done event (status "cancelled", the last
        vertices) follows. No-op when idle."""
        if self.fit_id is not None and self._process is not None and not self._stopping:
            self._outgoing.put(messages.cancel(self.fit_id))

    # -- results -------------------------------------------------------------------------

    def poll(self) -> list[dict]:
        """Events since the last call, oldest first; never blocks.

        {"type": "progress", "iteration", "iterations", "losses", "mean_iou", "view_iou",
        "elapsed", ...} (only the newest), {"type": "done", "status", "vertices", "faces",
        "colors", "metrics", "message", ...}, {"type": "error", "message", "kind", ...}.
        Raises BackendError when the backend died, hung or broke the protocol (events
        that arrived before are returned first).
        """
        events = self._drain()
        if not events:
            self._check_health()
        return events

    def latest_vertices(self) -> np.ndarray | None:
        """The newest streamed (V, 3) float32 vertices since the last call, else None."""
        mesh = self.latest_mesh()
        return None if mesh is None else mesh["vertices"]

    def latest_mesh(self) -> dict | None:
        """Like `latest_vertices` but the whole message: {"vertices", "faces",
        "iteration"}; faces is (F, 3) int32 only when the topology changed since the
        last call (at first: differs from the faces sent; then rebuild the mesh), else
        None."""
        with self._lock:
            mesh, self._vertices = self._vertices, None
        if mesh is None or mesh["fit_id"] != self.fit_id:
            return None
        return mesh

    def wait_done(self, timeout: float | None = None,
                  on_event: Callable[[dict], None] | None = None) -> dict:
        """Block until the running fit ends; returns its done event.

        on_event gets every event meanwhile. Raises FitFailedError for an error event,
        BackendError if the backend fails, TimeoutError after ``timeout`` seconds.
        """
        fit_id = self.fit_id
        if fit_id is None:
            raise BackendError("no fit is running")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
                if event["type"] == "done" and event["fit_id"] == fit_id:
                    return event
                if event["type"] == "error" and event["fit_id"] in (fit_id, None):
                    raise FitFailedError(event["message"])
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"fit {fit_id} did not finish within {timeout} s")
            time.sleep(0.01)

    def stderr_tail(self) -> str:
        """The backend's last log lines."""
        with self._lock:
            return "\n".join(self._stderr_tail)

    # -- internals -----------------------------------------------------------------------

    def _drain(self) -> list[dict]:
        events = []
        with self._lock:
            progress, self._progress = self._progress, None
        if progress is not None and progress["fit_id"] == self.fit_id:
            events.append(progress)
        while True:
            try:
                kind, item = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "eof":
                self._eof = True
            elif kind == "protocol_error":
                self._set_failure(f"The backend sent data this add-on cannot read ({item}). It was "
                           "stopped.")
            elif item["type"] == "hello":
                self._on_hello(item)
            else:
                event = self._on_message(item)
                if event is not None:
                    events.append(event)
        return events

    def _on_hello(self, hello: dict) -> None:
        if hello.get("protocol") != protocol.PROTOCOL_VERSION:
            self._set_failure(f"The backend speaks protocol version {hello.get('protocol')}, "
                              f"this add-on {protocol.PROTOCOL_VERSION}: install matching "
                              "versions")
            return
        self.hello = hello

    def _on_message(self, message: dict) -> dict | None:
        kind = message["type"]
        if kind == "error":
            if message["fatal"]:
                self._fatal_message = message["message"]
            if message["fit_id"] is not None and message["fit_id"] != self.fit_id:
                return None
            if message["fit_id"] is not None:
                self._end_fit()
            return message
        if kind in ("done", "masks", "cameras"):
            if message["fit_id"] != self.fit_id:
                return None
            self._end_fit()
            return message
        if kind in ("stage", "solve_progress"):
            return message if message["fit_id"] == self.fit_id else None
        log.warning("ignored an unexpected %r message from the backend", kind)
        return None

    def _end_fit(self) -> None:
        with self._lock:
            self.fit_id = None
            self._vertices = None
            self._progress = None

    def _check_health(self) -> None:
        if self._failure is not None:
            raise self._failure
        process = self._process
        if process is None:
            raise BackendError("the backend was not started: call start() first")
        if self._stopping:
            raise BackendError("the backend was shut down")
        code = process.poll()
        if self._eof or code is not None or self._write_error is not None:
            if code is None:
                try:  # it closed its output: it is exiting, or hopelessly broken
                    code = process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            self._set_failure(self._death_message(code))
        elif time.monotonic() - self._last_frame > self.timeout:
            self._set_failure(
                f"The backend (pid {process.pid}) has not answered for {self.timeout:g} s, not "
                "even with a heartbeat: it seems hung, so it was stopped.")
        if self._failure is not None:
            raise self._failure

    def _death_message(self, code: int | None) -> str:
        doing = f" while running fit {self.fit_id}" if self.fit_id is not None else (
            "" if self.hello is not None else " before it was ready")
        if code is None:
            how = "closed its output but is still running (it was stopped)"
        elif code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        text = f"The backend process {how}{doing}."
        if self._fatal_message:
            text += "\n" + self._fatal_message
        # Give the stderr thread a moment to collect the last lines.
        self._stderr_thread.join(timeout=0.5)
        tail = [line for line in self.stderr_tail().splitlines()
                if not (self._fatal_message and line.strip()
                        and line.strip() in self._fatal_message)]
        if tail:
            text += "\nLast lines of its log:\n" + "\n".join(tail[-20:])
        return text

    def _set_failure(self, text: str) -> None:
        """Stop the backend for good; `_check_health` raises this from now on."""
        self._kill()
        if self._failure is None:
            self._failure = BackendError(text)
        with self._lock:
            self.fit_id = None

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                log.error("the backend (pid %s) survived SIGKILL for 2 s", process.pid)

    def _require_running(self) -> None:
        if self.hello is None:
            raise BackendError("the backend is not ready: call start() first")
        self._check_health()

    # -- threads -------------------------------------------------------------------------

    def _read_loop(self) -> None:
        stream = self._process.stdout
        try:
            while True:
                message = protocol.read_frame(stream, max_frame_bytes=self.max_frame_bytes)
                if message is None:
                    break
                self._last_frame = time.monotonic()
                kind = message["type"]
                if kind == "heartbeat":
                    continue
                with self._lock:
                    if kind == "progress":
                        self._progress = message
                        continue
                    if kind == "vertices":  # keeps an unread topology change
                        self._vertices = messages.newest_vertices(self._vertices, message)
                        continue
                self._queue.put(("frame", message))
        except protocol.ProtocolError as exc:
            self._queue.put(("protocol_error", exc))
            return
        except (OSError, ValueError) as exc:  # the pipe was closed under us
            log.debug("backend output closed: %s", exc)
        self._queue.put(("eof", None))

    def _stderr_loop(self) -> None:
        try:
            for raw in self._process.stderr:
                line = raw.decode("utf-8", errors="replace").rstrip()
                with self._lock:
                    self._stderr_tail.append(line)
                log.debug("backend: %s", line)
        except (OSError, ValueError):
            pass

    def _write_loop(self) -> None:
        stream = self._process.stdin
        try:
            while (item := self._outgoing.get()) is not None:
                if isinstance(item, dict):
                    protocol.write_frame(stream, item)
                else:
                    protocol.write_chunks(stream, item)
        except (OSError, ValueError) as exc:  # it died or stopped reading
            self._write_error = exc
            return
        try:
            stream.close()
        except OSError:
            pass
