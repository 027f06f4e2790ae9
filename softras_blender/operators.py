"""Operators: fit the mesh to the images, cancel it, install and check the backend.

The fit's live state lives in `runtime.state`, so it is never saved into a .blend file
nor undone. Heavy modules load inside execute/invoke.
"""

from __future__ import annotations

import sys

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import Operator

from . import fit_options, runtime
from .modal import BackendOptions, TimerModal, error_text, redraw_areas, refuse_while_busy
from .runtime import Outcome, state


def flagged_lines(silhouettes: dict | None) -> list[str]:
    """One line per view the multi-view check flagged (from a silhouettes report)."""
    return [f"Flagged: {f['reason']}" for f in (silhouettes or {}).get("flagged", [])]


OFFLINE_INSTALL = (
    "Blender is set to work offline: allow online access in Preferences > System > Network "
    "to download the backend's packages and the salient-object model; without it, set up a "
    "custom backend command and, for silhouettes Learned, name a U2-Net-class ONNX file "
    "(e.g. u2netp.onnx) in the panel's Model")


class SOFTRAS_OT_fit(TimerModal, BackendOptions, Operator):
    """Deform the mesh until its soft silhouettes match the cameras' reference images"""

    bl_idname = "softras.fit"
    bl_label = "Fit to Images"
    bl_options = {"REGISTER", "UNDO"}

    device: EnumProperty(
        name="Device",
        items=(("PREFERENCES", "From Preferences", "The device chosen in the preferences"),
               *fit_options.DEVICE_ITEMS),
        default="PREFERENCES", options={"HIDDEN", "SKIP_SAVE"})
    contact_sheet: StringProperty(
        name="Contact Sheet", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="Image file the backend writes after the fit: photo | mask | fitted "
                    "outline per camera (empty: none)")

    @classmethod
    def poll(cls, context):
        if not refuse_while_busy(cls):
            return False
        if context.mode != "OBJECT":
            cls.poll_message_set("Switch to Object Mode to fit")
            return False
        return True

    # TimerModal runs the fit: execute() to the end (background), or modal() from a timer.

    def _cancel_asked(self, session) -> bool:
        return session.cancel_requested  # the Cancel Fit button

    def _show_progress(self, context, session) -> None:
        redraw_areas(context, {"VIEW_3D", "PROPERTIES"})

    def cancel(self, context):
        """Blender ends the operator (file load, quit): stop and restore."""
        session = state.session
        if session is not None:
            self._stop_timer(context)
            session.abort()
            state.session, state.outcome = None, Outcome.CANCELLED

    # -- shared steps -----------------------------------------------------------------

    def _begin(self, context):
        """Export the scene and launch the backend; None (after a report) when either
        fails. In background mode the fit prints its progress."""
        from .scene_export import ExportError, export_request, with_contact_sheet
        from .session import FitSession

        settings = runtime.backend_settings(context)
        device = settings["device"] if self.device == "PREFERENCES" else self.device
        try:
            request = export_request(context, device)
            if self.contact_sheet:
                request = with_contact_sheet(request, self.contact_sheet)
            session = FitSession(request, verbose=bpy.app.background)
        except (ExportError, ValueError) as exc:
            return self._refuse(Outcome.BAD_INPUT, error_text(exc))
        try:
            session.start(self._backend_launch(settings))
        except Exception as exc:  # e.g. the backend's Python cannot be started
            return self._refuse(Outcome.FAILED, f"Cannot start the fit: {error_text(exc)}")
        self._job = session
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

    def _fail(self, context, session, exc):
        state.session = None
        session.abort()
        state.status = self._report_failure("Fit", exc)
        # The backend's "fit" errors are bad input (a photo with no object, every view
        # flagged): fix and retry.
        bad_input = getattr(exc, "kind", None) == "fit"
        state.outcome = Outcome.BAD_INPUT if bad_input else Outcome.FAILED
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
            self.report({"ERROR"}, f"Backend not usable: {error_text(exc)}")
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
    NumPy and (with an NVIDIA GPU) CuPy into it, and download the salient-object model for
    silhouettes Learned. Downloads about 1-3 GB"""

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
            self.report({"ERROR"}, OFFLINE_INSTALL)
            return None
        user = runtime.user_dir()
        try:
            steps = environment.install_steps(
                sys.executable, user / environment.VENV_FOLDER,
                backend_requirements(backend_root()), environment.detect_cuda())
            steps.append(environment.model_step(sys.executable, user))
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
