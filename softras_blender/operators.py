"""Operators: fit the mesh to the images, cancel it, install and check the backend.

The fit's live state lives in `runtime.state`, so it is never saved into a .blend file
nor undone. Heavy modules load inside execute/invoke.
"""

from __future__ import annotations

import sys

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty
from bpy.types import Operator

from . import fit_options, runtime
from .modal import TimerModal
from .runtime import Outcome, state


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def redraw_areas(context, kinds: set[str]) -> None:
    """Redraw every area of these kinds (e.g. {"VIEW_3D"}) in every window."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in kinds:
                area.tag_redraw()


def flagged_lines(silhouettes: dict | None) -> list[str]:
    """One line per view the multi-view check flagged (from a silhouettes report)."""
    return [f"Flagged: {f['reason']}" for f in (silhouettes or {}).get("flagged", [])]


class SOFTRAS_OT_fit(TimerModal, Operator):
    """Deform the mesh until its soft silhouettes match the cameras' reference images"""

    bl_idname = "softras.fit"
    bl_label = "Fit to Images"
    bl_options = {"REGISTER", "UNDO"}

    device: EnumProperty(
        name="Device",
        items=(("PREFERENCES", "From Preferences", "The device chosen in the preferences"),
               *fit_options.DEVICE_ITEMS),
        default="PREFERENCES", options={"HIDDEN", "SKIP_SAVE"})
    backend_command: StringProperty(
        name="Backend Python", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="Command line of the backend's Python (empty: from the preferences)")
    threads: IntProperty(
        name="CPU Threads", default=-1, min=-1, options={"HIDDEN", "SKIP_SAVE"},
        description="The backend's CPU threads (-1: from the preferences, 0: automatic)")
    contact_sheet: StringProperty(
        name="Contact Sheet", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="Image file the backend writes after the fit: photo | mask | fitted "
                    "outline per camera (empty: none)")

    @classmethod
    def poll(cls, context):
        if state.session is not None:
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
            state.session, state.outcome = None, Outcome.CANCELLED
            self.report({"WARNING"}, "Fit interrupted; the mesh was restored")
            return {"CANCELLED"}
        except Exception as exc:
            return self._fail(session, exc)
        return self._finish(context, session)

    # The UI path (TimerModal.invoke): modal() fed by a timer.
    def modal(self, context, event):
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
        redraw_areas(context, {"VIEW_3D", "PROPERTIES"})
        if finished:
            self._stop_timer(context)
            return self._finish(context, session)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        """Blender ends the operator (file load, quit): stop and restore."""
        session = state.session
        if session is not None:
            self._stop_timer(context)
            session.abort()
            state.session, state.outcome = None, Outcome.CANCELLED

    # -- shared steps -----------------------------------------------------------------

    def _begin(self, context, verbose: bool = False):
        """Export the scene and launch the backend; None (after a report) when either
        fails."""
        from .environment import split_command
        from .scene_export import ExportError, export_request, with_contact_sheet
        from .session import FitSession

        settings = runtime.backend_settings(context)
        device = settings["device"] if self.device == "PREFERENCES" else self.device
        try:
            request = export_request(context, device)
            if self.contact_sheet:
                request = with_contact_sheet(request, self.contact_sheet)
            session = FitSession(request, verbose=verbose)
        except (ExportError, ValueError) as exc:
            return self._refuse(Outcome.BAD_INPUT, _message(exc))
        try:
            launch = runtime.backend_launch(settings, split_command(self.backend_command),
                                            None if self.threads < 0 else self.threads)
            session.start(launch)
        except Exception as exc:  # e.g. the backend's Python cannot be started
            return self._refuse(Outcome.FAILED, f"Cannot start the fit: {_message(exc)}")
        self._session = session
        self._timer = None
        state.session, state.status, state.outcome = session, [], None
        return session

    def _refuse(self, outcome: Outcome, text: str) -> None:
        """Report why no fit started."""
        state.outcome = outcome
        self.report({"ERROR"}, text)

    def _finish(self, context, session):
        state.session = None
        summary = session.summary()
        session.close()
        state.last_result = summary
        if summary["status"] == "cancelled":
            session.target.restore()
            state.status, state.outcome = ["Fit cancelled"], Outcome.CANCELLED
            self.report({"WARNING"}, "The backend cancelled the fit; the mesh was restored")
            return {"CANCELLED"}
        text = (f"Fitted {summary['object']!r} to {len(summary['views'])} views: mean IoU "
                f"{summary.get('mean_fit_iou', float('nan')):.3f}")
        held = summary.get("heldout_iou") or {}
        if held:
            text += f", held-out {sum(held.values()) / len(held):.3f}"
        text += f" ({summary['status']}, {summary['wall_seconds']:.1f} s)"
        state.status = ([text] + ([summary["message"]] if summary["message"] else [])
                        + flagged_lines(summary.get("silhouettes")))
        state.outcome = Outcome.FITTED
        level = "INFO" if summary["status"] == "done" else "WARNING"
        self.report({level}, text + (f". {summary['message']}" if summary["message"] else ""))
        return {"FINISHED"}

    def _cancel(self, context, session):
        self._stop_timer(context)
        state.session = None
        session.cancel()
        state.status = ["Fit cancelled; the mesh was restored"]
        state.outcome = Outcome.CANCELLED
        self.report({"INFO"}, "Fit cancelled; the mesh was restored")
        return {"CANCELLED"}

    def _fail(self, session, exc):
        state.session = None
        session.abort()
        message = _message(exc)
        state.status = ["Fit failed: " + message.splitlines()[0]]
        # The backend's "fit" errors are bad input (a photo with no object, every view
        # flagged): fix and retry.
        bad_input = getattr(exc, "kind", None) == "fit"
        state.outcome = Outcome.BAD_INPUT if bad_input else Outcome.FAILED
        print(f"SoftRas: fit failed: {message}", file=sys.stderr, flush=True)
        self.report({"ERROR"}, f"Fit failed: {message}")
        return {"CANCELLED"}



class SOFTRAS_OT_cancel_fit(Operator):
    """Stop the running fit and restore the mesh"""

    bl_idname = "softras.cancel_fit"
    bl_label = "Cancel Fit"

    @classmethod
    def poll(cls, context):
        return state.session is not None

    def execute(self, context):
        state.session.cancel_requested = True
        return {"FINISHED"}


class SOFTRAS_OT_check_backend(Operator):
    """Start the backend once and show what it reports (versions, device, GPU, threads)"""

    bl_idname = "softras.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        from .client import BackendClient, BackendError

        try:
            settings = runtime.backend_settings(context)
            python = runtime.backend_python(settings)
            launch = runtime.backend_launch(settings, python)
            client = BackendClient(launch.command, env=launch.env, cwd=launch.cwd)
            try:
                hello = client.start()
            finally:
                client.shutdown()
        except (ValueError, BackendError) as exc:
            state.backend_report = ["Backend not usable:"] + str(exc).splitlines()[:12]
            self.report({"ERROR"}, f"Backend not usable: {_message(exc)}")
            return {"CANCELLED"}
        lines = [
            f"Python {hello.get('python')}: {hello.get('python_executable', ' '.join(python))}",
            f"PyTorch {hello.get('torch')}, CuPy {hello.get('cupy') or 'not installed'}",
            f"Device: {hello.get('device')}"
            + (f" ({hello['gpu_name']})" if hello.get("gpu_name") else ""),
        ]
        threads = runtime.threads_text(hello)
        if threads is not None:
            lines.append(threads)
        state.backend_report = lines + [
            f"Backend {hello.get('backend_version')}, protocol {hello.get('protocol')}"]
        self.report({"INFO"}, "Backend OK: " + "; ".join(lines[1:]))
        return {"FINISHED"}


class SOFTRAS_OT_install_backend(Operator):
    """Create the managed environment in the add-on's user folder and install PyTorch,
    NumPy and (with an NVIDIA GPU) CuPy into it. Downloads about 1-3 GB"""

    bl_idname = "softras.install_backend"
    bl_label = "Install Backend"

    @classmethod
    def poll(cls, context):
        runner = state.install
        if runner is not None and not runner.finished:
            cls.poll_message_set("The installation is running")
            return False
        return True

    def _new_runner(self):
        """The install's step runner, kept in the runtime state; None (reported) if offline."""
        from . import environment
        from .backend.core.requirements import backend_requirements
        from .client import backend_root

        if not bpy.app.online_access:
            self.report({"ERROR"}, "Blender is set to work offline: allow online access in "
                        "Preferences > System > Network to download the backend's packages")
            return None
        user = runtime.user_dir()
        try:
            steps = environment.install_steps(
                sys.executable, user / environment.VENV_FOLDER,
                backend_requirements(backend_root()), environment.detect_cuda())
        except ValueError as exc:  # no requirements list, or no CuPy build for this CUDA
            self.report({"ERROR"}, str(exc))
            return None
        state.install = environment.StepRunner(steps, user / "logs" / "install.log")
        return state.install

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
        runner = state.install
        done = runner.poll()
        redraw_areas(context, {"PREFERENCES"})
        if not done:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._report(runner, runner.returncode)

    def cancel(self, context):
        runner = state.install
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
    session = state.session
    if session is not None:
        session.abort()
        state.session = None
    _unregister_classes()
