"""Solve Cameras: cameras for a folder of photos taken without any.

The backend solves them by structure from motion (`backend.sfm`: pycolmap on the CPU, in
its own process, progress streamed like a fit's) and writes a COLMAP text model into a
temporary folder; the add-on imports it like any COLMAP model
(`camera_import.import_cameras`: one camera per registered photo, the photo as its
background image, in a new collection named after the photo folder) and points the fit
at that collection. The backend chose the frame (`backend.sfm.normalise_scene`): Z up
(the camera ring's axis, or the photos' own up), the subject at the origin, about unit
radius or the scale of a camera distance the user gives.

Nothing in the scene changes until a solve succeeded: bad input, photos that do not
register, a cancel (Esc) or a missing pycolmap leave it as it was. The live state is
`runtime.state.solve`, never saved nor undone.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import IntProperty, StringProperty
from bpy.types import Operator, Panel

from . import runtime
from .client import BackendClient
from .modal import TimerModal
from .panels import SoftRasPanelMixin
from .runtime import state

STAGES = ("features", "matching", "mapping")  # backend.sfm.STAGES, in the order they run
STAGE_TEXT = {"features": "Finding features", "matching": "Matching photos",
              "mapping": "Placing cameras"}


class SolveFailed(RuntimeError):
    """The backend refused or failed the solve; the message is for the user. kind: the
    backend's error kind ("fit": bad photos, "missing_dependency": no pycolmap, ...)."""

    def __init__(self, message: str, kind: str = "internal"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SolveRequest:
    """What to solve (`backend.core.messages.solve_cameras` fields).

    images: the photo folder, absolute. ordering: "auto", "exhaustive" or "sequential".
    up: "auto", "ring", "camera", or the up direction (3 floats) in the solved frame.
    known_distance: the cameras' median distance to the subject in scene units, or None
    (the subject at about unit radius).
    """

    images: str
    ordering: str = "auto"
    up: str | tuple[float, float, float] = "auto"
    known_distance: float | None = None


def solve_request(settings) -> SolveRequest:
    """The scene's solve settings (``scene.softras``) as a request; ValueError saying what
    to set when the photo folder is missing."""
    if not settings.solve_folder:
        raise ValueError("choose the folder of photos to solve the cameras of (Photos)")
    folder = Path(bpy.path.abspath(settings.solve_folder))
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: choose the folder that holds the photos")
    return SolveRequest(str(folder.resolve()), settings.solve_ordering.lower(),
                        settings.solve_up.lower(), settings.solve_distance or None)


class SolveSession:
    """One camera solve in its own backend process, stepped like a `session.FitSession`:
    `start` launches the backend, `step` (from a timer, or `run` in a loop) sends the
    request once it is up and follows its progress until the cameras message (`reply`)."""

    def __init__(self, request: SolveRequest):
        self.request = request
        self.client: BackendClient | None = None
        self.sent = False
        self.reply: dict | None = None  # the backend's "cameras" message
        self.stage: str | None = None
        self.fraction = 0.0  # of the current stage
        self.message = ""
        self.started = time.monotonic()
        self._scratch: str | None = None  # the temporary folder the model is written to

    @property
    def progress(self) -> float:
        """The whole solve's progress in [0, 1], each stage a third."""
        if self.stage not in STAGES:
            return 0.0
        return (STAGES.index(self.stage) + min(self.fraction, 1.0)) / len(STAGES)

    @property
    def progress_text(self) -> str:
        if not self.sent:
            return "Starting the backend..."
        if self.stage is None:
            return "Reading the photos..."
        return f"{STAGE_TEXT.get(self.stage, self.stage)}: {self.message}"

    @property
    def model_folder(self) -> Path:
        """Where the backend writes the model: named after the photo folder, which names
        the imported collection (`camera_import.collection_name`)."""
        return Path(self._scratch) / Path(self.request.images).name

    def start(self, launch) -> None:
        """Launch the backend (a `runtime.BackendLaunch`); returns at once."""
        self._scratch = tempfile.mkdtemp(prefix="softras_solve_")
        self.client = BackendClient(launch.command, env=launch.env, cwd=launch.cwd)
        self.client.launch()

    def step(self) -> bool:
        """Handle what the backend sent since the last call; True once `reply` arrived.
        Raises SolveFailed (or client.BackendError); then call `close`."""
        client = self.client
        events = client.poll()
        if not self.sent:
            if client.hello is None:
                return False
            r = self.request
            client.solve_cameras(r.images, str(self.model_folder), r.ordering, r.up,
                                 r.known_distance)
            self.sent = True
        for event in events:
            if event["type"] == "solve_progress":
                self.stage, self.fraction = event["stage"], float(event["fraction"])
                self.message = event["message"]
            elif event["type"] == "error":
                raise SolveFailed(event["message"], event.get("kind", "internal"))
            elif event["type"] == "cameras":
                self.reply = event
        return self.reply is not None

    def run(self, interval: float = 0.05) -> dict:
        """Run to the end synchronously (background mode; `start` first); returns `reply`."""
        while not self.step():
            time.sleep(interval)
        return self.reply

    def cancel(self) -> None:
        """Ask the backend to stop the solve (its COLMAP stage is killed), then shut it down."""
        if self.client is not None and self.sent:
            self.client.cancel()
        self.close()

    def close(self) -> None:
        """Shut the backend down and remove the temporary model folder."""
        if self.client is not None:
            self.client.shutdown()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def import_solution(scene, reply: dict) -> bpy.types.Collection:
    """Add the cameras of a "solved" cameras message to ``scene`` through the COLMAP
    import, and point the fit at them (the cameras' collection, their background
    images). Raises CameraFileError or CameraImportError and then changes nothing."""
    from . import camera_import

    collection = camera_import.import_cameras(scene, reply["model"], reply["image_dir"])
    settings = scene.softras
    settings.camera_source = "COLLECTION"
    settings.camera_collection = collection
    settings.image_source = "BACKGROUND"
    return collection


def summary_lines(reply: dict, collection_name: str) -> list[str]:
    """What a finished solve did, for the panel and the report: how many photos became
    cameras, the frame chosen, and each photo left out with the reason."""
    registered = len(reply["registered"])
    total = registered + len(reply["unregistered"])
    seconds = sum(reply["stage_seconds"].values())
    lines = [f"Solved {registered} of {total} cameras into {collection_name!r} "
             f"in {seconds:.0f} s"]
    frame = reply.get("frame") or {}
    if "up" in frame:
        lines.append(f"Up: {frame['up']}; scale: {frame['scale']}")
    lines += [f"Not registered: {u['image']}: {u['reason']}" for u in reply["unregistered"]]
    return lines


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


class SOFTRAS_OT_solve_cameras(TimerModal, Operator):
    """Find the cameras of a folder of photos taken without them (structure from motion) \
and add them with their photos as background images, ready to fit"""

    bl_idname = "softras.solve_cameras"
    bl_label = "Solve Cameras"
    bl_options = {"REGISTER", "UNDO"}

    backend_command: StringProperty(
        name="Backend Python", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="Command line of the backend's Python (empty: from the preferences)")
    threads: IntProperty(
        name="CPU Threads", default=-1, min=-1, options={"HIDDEN", "SKIP_SAVE"},
        description="The backend's CPU threads (-1: from the preferences, 0: automatic)")

    @classmethod
    def poll(cls, context):
        if state.solve is not None:
            cls.poll_message_set("A camera solve is already running")
            return False
        if state.session is not None:
            cls.poll_message_set("A fit is running")
            return False
        return True

    # The background path: run to the end right here (timers never fire there).
    def execute(self, context):
        session = self._begin(context)
        if session is None:
            return {"CANCELLED"}
        try:
            session.run()
        except KeyboardInterrupt:
            return self._cancel(context, session)
        except Exception as exc:
            return self._fail(context, session, exc)
        return self._finish(context, session)

    # The UI path (TimerModal.invoke): modal() fed by a timer; Esc cancels.

    def modal(self, context, event):
        session = self._session
        if event.type == "ESC":
            return self._cancel(context, session)
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            finished = session.step()
        except Exception as exc:
            return self._fail(context, session, exc)
        if context.workspace is not None:
            context.workspace.status_text_set(f"Solving cameras: {session.progress_text} "
                                              "(Esc cancels)")
        _redraw(context)
        return self._finish(context, session) if finished else {"PASS_THROUGH"}

    def cancel(self, context):
        """Blender ends the operator (file load, quit): stop, change nothing."""
        if state.solve is not None:
            self._stop(context, state.solve, cancel=True)

    # -- shared steps -----------------------------------------------------------------

    def _begin(self, context):
        """Read the settings and launch the backend; None (after a report) on failure."""
        from .environment import split_command

        try:
            request = solve_request(context.scene.softras)
        except ValueError as exc:
            self.report({"ERROR"}, f"Cannot solve cameras: {_message(exc)}")
            return None
        session = SolveSession(request)
        try:
            launch = runtime.backend_launch(runtime.backend_settings(context),
                                            split_command(self.backend_command),
                                            None if self.threads < 0 else self.threads)
            session.start(launch)
        except Exception as exc:  # e.g. the backend's Python cannot be started
            session.close()
            self.report({"ERROR"}, f"Cannot start the camera solve: {_message(exc)}")
            return None
        self._session, self._timer, self._scene_name = session, None, context.scene.name
        state.solve, state.solve_status = session, []
        return session

    def _finish(self, context, session):
        reply = session.reply
        if reply["status"] != "solved":
            self._stop(context, session)
            state.solve_status = ["Camera solve cancelled by the backend; nothing changed"]
            self.report({"WARNING"}, state.solve_status[0])
            return {"CANCELLED"}
        try:  # before `_stop`, which removes the model's temporary folder
            collection = import_solution(bpy.data.scenes[self._scene_name], reply)
        except Exception as exc:  # e.g. the photos were moved meanwhile
            return self._fail(context, session, exc)
        self._stop(context, session)
        state.solve_status = summary_lines(reply, collection.name)
        self.report({"WARNING"} if reply["unregistered"] else {"INFO"},
                    "; ".join(state.solve_status))
        return {"FINISHED"}

    def _cancel(self, context, session):
        self._stop(context, session, cancel=True)
        state.solve_status = ["Camera solve cancelled; nothing changed"]
        self.report({"INFO"}, state.solve_status[0])
        return {"CANCELLED"}

    def _fail(self, context, session, exc):
        self._stop(context, session)
        message = _message(exc)
        state.solve_status = ["Camera solve failed: " + message.splitlines()[0]]
        print(f"SoftRas: camera solve failed: {message}", file=sys.stderr, flush=True)
        self.report({"ERROR"}, f"Camera solve failed: {message}")
        return {"CANCELLED"}

    def _stop(self, context, session, cancel: bool = False):
        """Stop the timer, clear the status bar, end the backend (cancelling the solve)."""
        self._stop_timer(context)
        if not bpy.app.background and context.workspace is not None:
            context.workspace.status_text_set(None)
        if cancel:
            session.cancel()
        else:
            session.close()
        state.solve = None


def _redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class SOFTRAS_PT_solve_cameras(SoftRasPanelMixin, Panel):
    bl_label = "Solve Cameras"
    bl_idname = "SOFTRAS_PT_solve_cameras"
    bl_parent_id = "SOFTRAS_PT_fit"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.softras
        session = state.solve
        col = layout.column()
        col.enabled = session is None
        for name in ("solve_folder", "solve_ordering", "solve_up", "solve_distance"):
            col.prop(settings, name)
        if session is not None:
            layout.progress(factor=session.progress, type="BAR", text=session.progress_text)
            layout.label(text="Esc cancels", icon="CANCEL")
            return
        row = layout.row()
        row.scale_y = 1.3
        row.operator(SOFTRAS_OT_solve_cameras.bl_idname, icon="OUTLINER_OB_CAMERA")
        for line in state.solve_status:
            layout.label(text=line)


classes = (SOFTRAS_OT_solve_cameras, SOFTRAS_PT_solve_cameras)
register, unregister = bpy.utils.register_classes_factory(classes)
