"""Operators: fit the mesh to the images, cancel it, install and check the backend.

The fit's live state is plain module state (`running_session`), so it is never
saved into a .blend file nor undone. Heavy modules load inside execute/invoke.
"""

from __future__ import annotations

import sys

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import Operator

TIMER_STEP = 0.1  # seconds between two looks at the backend in the UI

_state = {"session": None, "status": [], "last_result": None, "install": None,
          "backend_report": []}


def running_session():
    """The fit running in the UI, or None."""
    return _state["session"]


def last_status() -> list[str]:
    """Lines describing the last fit's outcome (for the panel)."""
    return list(_state["status"])


def last_result() -> dict | None:
    """Plain data about the last finished fit (`session.FitSession.summary`)."""
    return _state["last_result"]


def install_state():
    """The managed-environment installer (`environment.StepRunner`), or None."""
    return _state["install"]


def install_log_tail() -> list[str]:
    runner = _state["install"]
    return runner.log_tail() if runner is not None else []


def backend_report() -> list[str]:
    """What the last "Check Backend" found, as lines."""
    return list(_state["backend_report"])


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


class SOFTRAS_OT_fit(Operator):
    """Deform the mesh until its soft silhouettes match the cameras' reference images"""

    bl_idname = "softras.fit"
    bl_label = "Fit to Images"
    bl_options = {"REGISTER", "UNDO"}

    device: EnumProperty(
        name="Device",
        items=(("PREFERENCES", "From Preferences", "The device chosen in the preferences"),
               ("AUTO", "Auto", ""), ("CPU", "CPU", ""), ("CUDA", "CUDA", "")),
        default="PREFERENCES", options={"HIDDEN", "SKIP_SAVE"})
    backend_command: StringProperty(
        name="Backend Python", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="Command line of the backend's Python (empty: from the preferences)")

    @classmethod
    def poll(cls, context):
        if _state["session"] is not None:
            cls.poll_message_set("A fit is already running")
            return False
        if context.mode != "OBJECT":
            cls.poll_message_set("Switch to Object Mode to fit")
            return False
        return True

    # The background path: run to the end right here (timers never fire there).
    def execute(self, context):
        session = self._begin(context, verbose=True)
        if session is None:
            return {"CANCELLED"}
        try:
            session.run()
        except KeyboardInterrupt:
            session.abort()
            self.report({"WARNING"}, "Fit interrupted; the mesh was restored")
            return {"CANCELLED"}
        except Exception as exc:
            return self._fail(session, exc)
        return self._finish(context, session)

    # The UI path: a modal operator fed by a timer.
    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        session = self._begin(context)
        if session is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_STEP, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        from .session import redraw_views

        session = self._session
        if event.type == "ESC" or session.cancel_requested:
            return self._cancel(context, session)
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            finished = session.step()
        except Exception as exc:
            self._stop_timer(context)
            return self._fail(session, exc)
        redraw_views()
        if finished:
            self._stop_timer(context)
            return self._finish(context, session)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        """Blender ends the operator (file load, quit): stop and restore."""
        session = _state["session"]
        if session is not None:
            self._stop_timer(context)
            session.abort()
            _state["session"] = None

    # -- shared steps -----------------------------------------------------------------

    def _begin(self, context, verbose: bool = False):
        """Export the scene and launch the backend; None (after a report) on bad input."""
        from .environment import split_command
        from .scene_export import ExportError
        from .session import FitSession

        device = None if self.device == "PREFERENCES" else self.device
        python = split_command(self.backend_command) or None
        try:
            session = FitSession(context, device=device, backend_python=python,
                                 verbose=verbose)
            session.start()
        except (ExportError, ValueError) as exc:
            self.report({"ERROR"}, _message(exc))
            return None
        except Exception as exc:  # e.g. the backend's Python cannot be started
            self.report({"ERROR"}, f"Cannot start the fit: {_message(exc)}")
            return None
        self._session = session
        self._timer = None
        _state["session"] = session
        _state["status"] = []
        return session

    def _finish(self, context, session):
        _state["session"] = None
        summary = session.summary()
        session.close()
        _state["last_result"] = summary
        if summary["status"] == "cancelled":
            session.target.restore()
            _state["status"] = ["Fit cancelled"]
            self.report({"WARNING"}, "The backend cancelled the fit; the mesh was restored")
            return {"CANCELLED"}
        text = (f"Fitted {summary['object']!r} to {len(summary['views'])} views: mean IoU "
                f"{summary.get('mean_fit_iou', float('nan')):.3f}")
        held = summary.get("heldout_iou") or {}
        if held:
            text += f", held-out {sum(held.values()) / len(held):.3f}"
        text += f" ({summary['status']}, {summary['wall_seconds']:.1f} s)"
        _state["status"] = [text] + ([summary["message"]] if summary["message"] else [])
        level = "INFO" if summary["status"] == "done" else "WARNING"
        self.report({level}, text + (f". {summary['message']}" if summary["message"] else ""))
        return {"FINISHED"}

    def _cancel(self, context, session):
        self._stop_timer(context)
        _state["session"] = None
        session.cancel()
        _state["status"] = ["Fit cancelled; the mesh was restored"]
        self.report({"INFO"}, "Fit cancelled; the mesh was restored")
        return {"CANCELLED"}

    def _fail(self, session, exc):
        _state["session"] = None
        session.abort()
        message = _message(exc)
        _state["status"] = ["Fit failed: " + message.splitlines()[0]]
        print(f"SoftRas: fit failed: {message}", file=sys.stderr, flush=True)
        self.report({"ERROR"}, f"Fit failed: {message}")
        return {"CANCELLED"}

    def _stop_timer(self, context):
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None


class SOFTRAS_OT_cancel_fit(Operator):
    """Stop the running fit and restore the mesh"""

    bl_idname = "softras.cancel_fit"
    bl_label = "Cancel Fit"

    @classmethod
    def poll(cls, context):
        return _state["session"] is not None

    def execute(self, context):
        _state["session"].cancel_requested = True
        return {"FINISHED"}


class SOFTRAS_OT_check_backend(Operator):
    """Start the backend once and show what it reports (versions, device, GPU)"""

    bl_idname = "softras.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        from . import preferences
        from .client import BackendClient, BackendError, default_backend_command
        from .session import backend_environment

        try:
            python = preferences.backend_command(preferences.backend_settings(context))
            client = BackendClient(default_backend_command(python),
                                   env=backend_environment(preferences.user_dir()))
            try:
                hello = client.start()
            finally:
                client.shutdown()
        except (ValueError, BackendError) as exc:
            _state["backend_report"] = ["Backend not usable:"] + str(exc).splitlines()[:12]
            self.report({"ERROR"}, f"Backend not usable: {_message(exc)}")
            return {"CANCELLED"}
        lines = [
            f"Python {hello.get('python')}: {hello.get('python_executable', ' '.join(python))}",
            f"PyTorch {hello.get('torch')}, CuPy {hello.get('cupy') or 'not installed'}",
            f"Device: {hello.get('device')}"
            + (f" ({hello['gpu_name']})" if hello.get("gpu_name") else ""),
            f"Backend {hello.get('backend_version')}, protocol {hello.get('protocol')}",
        ]
        _state["backend_report"] = lines
        self.report({"INFO"}, "Backend OK: " + "; ".join(lines[1:3]))
        return {"FINISHED"}


class SOFTRAS_OT_install_backend(Operator):
    """Create the managed environment in the add-on's user folder and install PyTorch,
    NumPy and (with an NVIDIA GPU) CuPy into it. Downloads about 1-3 GB"""

    bl_idname = "softras.install_backend"
    bl_label = "Install Backend"

    @classmethod
    def poll(cls, context):
        runner = _state["install"]
        if runner is not None and not runner.finished:
            cls.poll_message_set("The installation is running")
            return False
        return True

    def _new_runner(self):
        """The install's step runner, kept in the module state; None (reported) if offline."""
        from . import environment, preferences

        if not bpy.app.online_access:
            self.report({"ERROR"}, "Blender is set to work offline: allow online access in "
                        "Preferences > System > Network to download the backend's packages")
            return None
        user = preferences.user_dir()
        try:
            steps = environment.install_steps(
                sys.executable, user / environment.VENV_FOLDER,
                environment.read_requirements(preferences.ADDON_DIR), environment.detect_cuda())
        except ValueError as exc:  # no requirements list, or no CuPy build for this CUDA
            self.report({"ERROR"}, str(exc))
            return None
        _state["install"] = environment.StepRunner(steps, user / "logs" / "install.log")
        return _state["install"]

    def execute(self, context):
        runner = self._new_runner()
        if runner is None:
            return {"CANCELLED"}
        return self._report(runner, runner.run_to_end())

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        runner = self._new_runner()
        if runner is None:
            return {"CANCELLED"}
        runner.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.5, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        runner = _state["install"]
        done = runner.poll()
        for window in context.window_manager.windows:
            for area in window.screen.areas:
                if area.type == "PREFERENCES":
                    area.tag_redraw()
        if not done:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._report(runner, runner.returncode)

    def cancel(self, context):
        runner = _state["install"]
        if runner is not None:
            runner.cancel()

    def _report(self, runner, code):
        if code == 0:
            self.report({"INFO"}, "Backend installed: press Check Backend to try it")
            return {"FINISHED"}
        self.report({"ERROR"}, f"Installing the backend failed at '{runner.label}' (exit code "
                               f"{code}); see {runner.log_path}")
        return {"CANCELLED"}


classes = (SOFTRAS_OT_fit, SOFTRAS_OT_cancel_fit, SOFTRAS_OT_check_backend,
           SOFTRAS_OT_install_backend)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)
register = _register_classes


def unregister():
    session = _state["session"]
    if session is not None:
        session.abort()
        _state["session"] = None
    _unregister_classes()

