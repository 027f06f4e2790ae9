"""One fit, from the scene to the last applied vertices.

`FitSession` exports the scene, starts the backend through `client.BackendClient`
and, on every `step`, applies what the backend sent. The operator's modal path
calls `step` from a 0.1 s timer and its background path calls it in a loop: the
same loop body either way.
"""

from __future__ import annotations

import os
import sys
import time

import bpy

from . import fit_options, preferences, scene_export
from .client import BackendClient, BackendError, backend_root, default_backend_command
from .mesh_update import FitTarget


class FitFailed(RuntimeError):
    """The fit stopped with an error; the message is for the user."""


def settings_dict(settings) -> dict:
    """The scene's fit settings (``scene.softras``) as plain values."""
    return {
        "iterations": settings.iterations,
        "sharpness": settings.sharpness,
        "fit_colors": settings.fit_colors,
        "smoothness": settings.smoothness,
        "start": settings.mesh_source,
        "align_mesh": settings.align_mesh,
    }


def backend_environment(user_dir) -> dict:
    """The backend process' environment: ours, with the add-on's backend importable and
    CuPy's compiled kernels cached in the add-on's user folder."""
    env = dict(os.environ)
    root = str(backend_root())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["CUPY_CACHE_DIR"] = str(user_dir / "cupy-cache")
    # Compiled Python files go to the user folder too, never into the add-on's.
    env["PYTHONPYCACHEPREFIX"] = str(user_dir / "pycache")
    return env


class FitSession:
    """A fit of the scene's settings; raises scene_export.ExportError for bad input.

    device: "AUTO" | "CPU" | "CUDA", or None for the preferences' choice.
    backend_python: an argv prefix for the backend's Python, or None for the
    preferences' choice.
    """

    def __init__(self, context, device: str | None = None,
                 backend_python: list[str] | None = None, verbose: bool = False):
        scene = context.scene
        settings = scene.softras
        self.verbose = verbose

        if settings.mesh_source in fit_options.START_SHAPES:
            source = None
        elif settings.mesh_source == "OBJECT":
            source = settings.target_object
            if source is None:
                raise scene_export.ExportError("no object chosen to fit: pick a mesh object, "
                                               "or start from the visual hull")
        else:
            source = context.active_object
            if source is None:
                raise scene_export.ExportError("there is no active object: select the mesh to "
                                               "fit, or start from the visual hull")
        if source is not None:
            if source.type != "MESH":
                raise scene_export.ExportError(
                    f"{source.name!r} is a {source.type.lower()} object, not a mesh: select a "
                    "mesh to fit, or start from the visual hull")
            if source.mode != "OBJECT":
                raise scene_export.ExportError(f"{source.name!r} is in {source.mode.title()} "
                                               "Mode: switch to Object Mode to fit it")
            self.vertices, self.faces = scene_export.mesh_arrays(source)
        else:
            self.vertices = self.faces = None

        cameras = scene_export.scene_cameras(
            scene, settings.camera_source, settings.camera_collection, settings.image_source,
            settings.image_folder)
        self.views = scene_export.export_views(
            scene, cameras, settings.image_source, settings.image_folder,
            settings.held_out_every, settings.resolution)
        backend = preferences.backend_settings(context)
        try:
            self.options = fit_options.options_from_settings(settings_dict(settings),
                                                             device or backend["device"])
        except ValueError as exc:
            raise scene_export.ExportError(str(exc)) from exc
        try:
            python = backend_python or preferences.backend_command(backend)
            self.command = default_backend_command(python)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        start_name = {"HULL": "Visual Hull", "SPHERE": "Sphere"}.get(settings.mesh_source, "")
        self.target = FitTarget(source.name if source else None, scene.name, self.faces,
                                start_name)

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
        self._last_print = 0.0

    # -- what the panel shows -------------------------------------------------------

    @property
    def progress(self) -> float:
        return min(1.0, self.iteration / max(1, self.iterations))

    @property
    def progress_text(self) -> str:
        if not self.fit_sent:
            return "Starting the backend..."
        return f"{self.iteration} / {self.iterations}"

    # -- the loop -------------------------------------------------------------------

    def start(self) -> None:
        """Launch the backend process (returns at once; the fit is sent once it is up)."""
        env = backend_environment(preferences.user_dir())
        self.client = BackendClient(self.command, env=env, cwd=str(backend_root()))
        self.client.launch()

    def step(self) -> bool:
        """Handle what the backend sent since the last call; True once the fit is done.

        Raises FitFailed (or BackendError) when it failed; then call `abort`.
        """
        client = self.client
        events = client.poll()
        if not self.fit_sent:
            if client.hello is None:
                return False
            client.start_fit(self.vertices, self.faces, [v.to_wire() for v in self.views],
                             self.options)
            self.fit_sent = True
            self._log(f"backend ready ({client.hello.get('device')}, torch "
                      f"{client.hello.get('torch')}): fitting {len(self.views)} views")
        for event in events:
            kind = event["type"]
            if kind == "progress":
                self._on_progress(event)
            elif kind == "error":
                raise FitFailed(event["message"])
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

    def run(self, interval: float = 0.05) -> dict:
        """Run to the end synchronously (background mode); returns `summary`."""
        if self.client is None:
            self.start()
        while not self.step():
            time.sleep(interval)
        return self.summary()

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
            "backend": dict(self.client.hello or {}) if self.client else {},
            **metrics,
        }

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


def redraw_views() -> None:
    """Redraw every 3D Viewport (the fitted mesh and the sidebar's progress)."""
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "PROPERTIES"}:
                area.tag_redraw()


__all__ = ["BackendError", "FitFailed", "FitSession", "redraw_views"]
