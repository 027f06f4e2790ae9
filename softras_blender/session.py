"""One fit, from a `scene_export.FitRequest` to the last applied vertices.

`FitSession` only runs a request: `start` launches the backend through
`client.BackendClient` and, on every `step`, it applies what the backend sent. The
operator's modal path calls `step` from a 0.1 s timer and its background path calls it
in a loop: the same loop body either way. What to fit (`scene_export.export_request`)
and how to launch the backend (`runtime.backend_launch`) are decided before.
"""

from __future__ import annotations

import sys
import time

from .client import BackendClient
from .mesh_update import FitTarget
from .scene_export import FitRequest


class FitFailed(RuntimeError):
    """The fit stopped with an error; the message is for the user. kind: the backend's
    error kind ("fit": bad input, such as a photo with no object; "internal"...)."""

    def __init__(self, message: str, kind: str = "internal"):
        super().__init__(message)
        self.kind = kind


class FitSession:
    """A fit of one request. Creating it prepares the objects it writes to (ValueError
    when the object to fit cannot take the result, e.g. a zero scale); `start` launches
    the backend with a `runtime.BackendLaunch`."""

    def __init__(self, request: FitRequest, verbose: bool = False):
        self.request = request
        self.views = request.views
        self.options = request.options
        self.target = FitTarget(request.source_name, request.scene_name, request.start_name)
        self.verbose = verbose
        self.client: BackendClient | None = None
        self.fit_sent = False
        self.done: dict | None = None
        self.started = time.monotonic()
        self.iteration = 0
        self.iterations = self.options["iterations"]
        self.losses: dict[str, float] = {}
        self.mean_iou: float | None = None
        self.iou_history: list[tuple[int, float]] = []
        self.updates = 0  # streamed vertex arrays applied
        self.cancel_requested = False
        self.stage: tuple[str, int, int] | None = None  # (name, done, total) before fitting
        self._last_print = 0.0

    # -- what the panel shows -------------------------------------------------------

    @property
    def progress(self) -> float:
        return min(1.0, self.iteration / max(1, self.iterations))

    @property
    def progress_text(self) -> str:
        if not self.fit_sent:
            return "Starting the backend..."
        if self.stage is not None and self.iteration == 0:
            name, done, total = self.stage
            return f"Finding {name}: {done} / {total}"
        return f"{self.iteration} / {self.iterations}"

    @property
    def hello(self) -> dict | None:
        """The backend's hello (versions, device, threads) once it is up, else None."""
        return self.client.hello if self.client is not None else None

    # -- the loop -------------------------------------------------------------------

    def start(self, launch) -> None:
        """Launch the backend process (returns at once; the fit is sent once it is up).

        launch: a `runtime.BackendLaunch` (command, environment, working folder).
        """
        self.client = BackendClient(launch.command, env=launch.env, cwd=launch.cwd)
        self.client.launch()

    def step(self) -> bool:
        """Handle what the backend sent since the last call; True once the fit is done.

        Raises FitFailed (or client.BackendError) when it failed; then call `abort`.
        """
        client = self.client
        events = client.poll()
        if not self.fit_sent:
            if client.hello is None:
                return False
            request = self.request
            client.start_fit(request.vertices, request.faces, request.views, request.options,
                             request.silhouettes)
            self.fit_sent = True
            self._log(f"backend ready ({client.hello.get('device')}, torch "
                      f"{client.hello.get('torch')}): fitting {len(self.views)} views")
        for event in events:
            kind = event["type"]
            if kind == "progress":
                self._on_progress(event)
            elif kind == "stage":
                self.stage = (event["stage"], int(event["done"]), int(event["total"]))
                self._log(f"{event['stage']}: {event['done']} / {event['total']} views")
            elif kind == "error":
                raise FitFailed(event["message"], event.get("kind", "internal"))
            elif kind == "done":
                self.done = event
        if self.done is None:
            mesh = client.latest_mesh()
            if mesh is not None:
                self.target.apply(mesh["vertices"], mesh["faces"])
                self.updates += 1
            return False
        self._apply_result(self.done)
        return True

    def cancel(self) -> None:
        """Stop the backend and put the mesh back as it was."""
        self.abort()

    def abort(self) -> None:
        """Shut the backend down (if running) and undo every change to the scene."""
        self.close()
        self.target.restore()

    def close(self) -> None:
        if self.client is not None:
            self.client.shutdown()

    def summary(self) -> dict:
        """Plain data about the finished fit (the headless report's body)."""
        done = self.done or {}
        metrics = dict(done.get("metrics") or {})
        result = self.target.result
        return {
            "status": done.get("status"),
            "message": done.get("message", ""),
            "object": (result.name if result else self.target.source_name),
            "source_object": self.target.source_name,
            "topology_changed": bool(done.get("topology_changed", False)),
            "views": [{"name": v.name, "held_out": v.held_out, "width": v.camera.width,
                       "height": v.camera.height} for v in self.views],
            "options": self.options,
            "iou_progress": [{"iteration": i, "mean_iou": m} for i, m in self.iou_history],
            "streamed_updates": self.updates,
            "wall_seconds": time.monotonic() - self.started,
            "backend": dict(self.hello or {}),
            "silhouettes": done.get("silhouettes"),
            "camera_corrections": self._corrections(done.get("camera_corrections", [])),
            **metrics,
        }

    def _corrections(self, corrections: list[dict]) -> list[dict]:
        """The refined cameras' corrections, each with the pose and fx / width (per px)
        of the camera as fitted: `camera_refine_ops` applies them to that pose."""
        cameras = {v.name: v.camera for v in self.views}
        return [{**c, "world_to_camera": cameras[c["name"]].world_to_camera.tolist(),
                 "fx_per_px": float(cameras[c["name"]].intrinsics[0, 0]
                                    / cameras[c["name"]].width)}
                for c in corrections]

    # -- internals ------------------------------------------------------------------

    def _on_progress(self, event: dict) -> None:
        self.iteration = int(event["iteration"])
        self.iterations = int(event["iterations"])
        self.losses = dict(event["losses"])
        self.mean_iou = float(event["mean_iou"])
        self.iou_history.append((self.iteration, self.mean_iou))
        now = time.monotonic()
        if now - self._last_print >= 1.0:
            self._last_print = now
            losses = " ".join(f"{k} {v:.4f}" for k, v in self.losses.items())
            self._log(f"iteration {self.iteration}/{self.iterations}  mean IoU "
                      f"{self.mean_iou:.4f}  {losses}")

    def _apply_result(self, done: dict) -> None:
        faces = done["faces"] if done.get("topology_changed") else None
        self.target.apply(done["vertices"], faces)
        if done.get("colors") is not None:
            self.target.apply_colors(done["colors"])
        self.iteration = int(done["metrics"].get("iterations", self.iteration))
        self._log(f"{done['status']}: mean IoU {done['metrics'].get('mean_fit_iou', 0):.4f} "
                  f"after {self.iteration} iterations")

    def _log(self, text: str) -> None:
        if self.verbose:
            print(f"SoftRas: {text}", file=sys.stdout, flush=True)
