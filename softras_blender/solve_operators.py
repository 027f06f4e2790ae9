"""Solve Cameras: cameras for a folder of photos taken without any.

The backend solves them by structure from motion (`backend.sfm`: pycolmap on the CPU, in
its own process, progress streamed like a fit's) and writes a COLMAP text model into a
temporary folder; the add-on imports it like any COLMAP model
(`camera_import.import_cameras`: one camera per registered photo, the photo as its
background image, in a new collection named after the photo folder) and points the fit
at that collection. The backend chose the frame (`backend.sfm.normalise_scene`): Z up
(the camera ring's axis, or the photos' own up), the subject at the origin, about unit
radius or the scale of a camera distance the user gives. When the user names the
direction of gravity in the photos instead, the add-on turns the solved cameras about
the subject so that it points down (`gravity_rotation`) before adding them.

Nothing in the scene changes until a solve succeeded: bad input, photos that do not
register, a cancel (Esc) or a missing pycolmap leave it as it was. The live state is
`runtime.state.solve`, never saved nor undone.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from bpy.types import Operator, Panel

from . import runtime
from .client import BackendClient
from .modal import BackendOptions, TimerModal, error_text, redraw_areas, refuse_while_busy
from .panels import SoftRasSubPanelMixin, split_layout
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
    gravity: the direction gravity pulls in the photos (3 floats, x right, y up, z towards
    the viewer; (0, -1, 0) for upright photos), or None; the solved scene is then turned
    so it points down (`gravity_rotation`) from the backend's "auto" frame.
    """

    images: str
    ordering: str = "auto"
    up: str | tuple[float, float, float] = "auto"
    known_distance: float | None = None
    gravity: tuple[float, float, float] | None = None


def solve_request(settings) -> SolveRequest:
    """The scene's solve settings (``scene.softras``) as a request; ValueError saying what
    to set when the photo folder is missing."""
    if not settings.solve_folder:
        raise ValueError("choose the folder of photos to solve the cameras of (Photos)")
    folder = Path(bpy.path.abspath(settings.solve_folder))
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: choose the folder that holds the photos")
    if settings.solve_up != "GRAVITY":
        return SolveRequest(str(folder.resolve()), settings.solve_ordering.lower(),
                            settings.solve_up.lower(), settings.solve_distance or None)
    gravity = tuple(float(v) for v in settings.solve_gravity)
    if not np.any(gravity):
        raise ValueError("the gravity direction is zero: give the way gravity pulls in the "
                         "photos (x right, y up, z towards you; 0, -1, 0 for upright photos)")
    return SolveRequest(str(folder.resolve()), settings.solve_ordering.lower(), "auto",
                        settings.solve_distance or None, gravity)


def gravity_rotation(matrices: np.ndarray, gravity) -> np.ndarray:
    """The (3, 3) float64 rotation that turns solved cameras so gravity points down (-Z).

    matrices: (N, 4, 4) the cameras' matrix_world (Blender's camera axes: x right, y up,
    looking down -z); gravity: (3,) the direction gravity pulls in the photos, in those
    axes. The world's up is the mean over the cameras of gravity's opposite; the rotation
    is the smallest that takes it to +Z, about the origin (the subject). ValueError when
    that mean cancels out (the gravity given points every way among the solved cameras).
    """
    gravity = np.asarray(gravity, dtype=np.float64)
    rotations = np.asarray(matrices, dtype=np.float64)[:, :3, :3]
    rotations = rotations / np.linalg.norm(rotations, axis=1, keepdims=True)  # unit columns
    up = -(rotations @ (gravity / np.linalg.norm(gravity))).mean(axis=0)
    if np.linalg.norm(up) < 0.1:
        raise ValueError(f"the gravity given, {tuple(gravity)} in the photos, points a "
                         "different way in each solved camera: give the direction gravity "
                         "pulls in the photos (x right, y up, z towards you)")
    up /= np.linalg.norm(up)
    cos = float(up[2])
    if cos < -1.0 + 1e-9:  # upside down: half a turn about X
        return np.diag([1.0, -1.0, -1.0])
    axis = np.cross(up, [0.0, 0.0, 1.0])
    skew = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]],
                     [-axis[1], axis[0], 0.0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + cos)  # Rodrigues' formula


class SolveSession:
    """One camera solve in its own backend process, stepped like a `session.FitSession`:
    `start` launches the backend, `step` (from a timer, or in a loop) sends the
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


def import_solution(scene, reply: dict, gravity=None) -> bpy.types.Collection:
    """Add the cameras of a "solved" cameras message to ``scene`` through the COLMAP
    import, turned so that ``gravity`` (in the photos, see `gravity_rotation`; None: as
    solved) points down, and point the fit at them (the cameras' collection, their
    background images). Raises CameraFileError, CameraImportError or ValueError (the
    gravity cancels out) and then changes nothing."""
    from . import camera_import
    from .backend.core.camera_files import load_camera_file

    cameras = load_camera_file(reply["model"], reply["image_dir"])
    if gravity is not None:
        rotation = np.eye(4)
        rotation[:3, :3] = gravity_rotation(
            np.stack([np.asarray(c.settings["matrix_world"]) for c in cameras]), gravity)
        for camera in cameras:
            camera.settings["matrix_world"] = (rotation @ camera.settings["matrix_world"]
                                               ).tolist()
    collection = camera_import.add_cameras(scene, cameras,
                                           camera_import.collection_name(reply["model"]))
    settings = scene.softras
    settings.camera_source = "COLLECTION"
    settings.camera_collection = collection
    settings.image_source = "BACKGROUND"
    return collection


def summary_lines(reply: dict, collection_name: str, gravity=None) -> list[str]:
    """What a finished solve did, for the panel and the report: how many photos became
    cameras, the frame chosen (up from ``gravity`` when the user gave it), and each photo
    left out with the reason."""
    registered = len(reply["registered"])
    total = registered + len(reply["unregistered"])
    seconds = sum(reply["stage_seconds"].values())
    lines = [f"Solved {registered} of {total} cameras into {collection_name!r} "
             f"in {seconds:.0f} s"]
    frame = reply.get("frame") or {}
    if "up" in frame:
        up = frame["up"] if gravity is None else (
            "against the gravity given in the photos, " + ", ".join(f"{v:g}" for v in gravity))
        lines.append(f"Up: {up}; scale: {frame['scale']}")
    lines += [f"Not registered: {u['image']}: {u['reason']}" for u in reply["unregistered"]]
    return lines


class SOFTRAS_OT_solve_cameras(TimerModal, BackendOptions, Operator):
    """Find the cameras of a folder of photos taken without them (structure from motion) \
and add them with their photos as background images, ready to fit"""

    bl_idname = "softras.solve_cameras"
    bl_label = "Solve Cameras"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return refuse_while_busy(cls)

    # TimerModal runs the solve: execute() to the end (background), or modal() from a
    # timer; Esc cancels.

    def _show_progress(self, context, session) -> None:
        if context.workspace is not None:
            context.workspace.status_text_set(f"Solving cameras: {session.progress_text} "
                                              "(Esc cancels)")
        redraw_areas(context, {"VIEW_3D"})

    def cancel(self, context):
        """Blender ends the operator (file load, quit): stop, change nothing."""
        if state.solve is not None:
            self._stop(context, state.solve, cancel=True)

    # -- shared steps -----------------------------------------------------------------

    def _begin(self, context):
        """Read the settings and launch the backend; None (after a report) on failure."""
        try:
            request = solve_request(context.scene.softras)
        except ValueError as exc:
            self.report({"ERROR"}, f"Cannot solve cameras: {error_text(exc)}")
            return None
        session = SolveSession(request)
        try:
            session.start(self._backend_launch(runtime.backend_settings(context)))
        except Exception as exc:  # e.g. the backend's Python cannot be started
            session.close()
            self.report({"ERROR"}, f"Cannot start the camera solve: {error_text(exc)}")
            return None
        self._job, self._timer, self._scene_name = session, None, context.scene.name
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
            collection = import_solution(bpy.data.scenes[self._scene_name], reply,
                                         session.request.gravity)
        except Exception as exc:  # e.g. the photos were moved meanwhile
            return self._fail(context, session, exc)
        self._stop(context, session)
        state.solve_status = summary_lines(reply, collection.name, session.request.gravity)
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
        state.solve_status = self._report_failure("Camera solve", exc)
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


class SOFTRAS_PT_solve_cameras(SoftRasSubPanelMixin, Panel):
    bl_label = "Solve Cameras"
    bl_idname = "SOFTRAS_PT_solve_cameras"

    def draw(self, context):
        layout = split_layout(self.layout)
        settings = context.scene.softras
        session = state.solve
        col = layout.column()
        col.enabled = session is None
        for name in ("solve_folder", "solve_ordering", "solve_up", "solve_distance"):
            col.prop(settings, name)
            if name == "solve_up" and settings.solve_up == "GRAVITY":
                col.prop(settings, "solve_gravity")
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
