"""What the add-on's backend operators (fit, silhouette preview, camera solve) share: the
timer plumbing, the backend launch options, one job at a time, and failure reports.

Each runs one backend job, an object whose ``step()`` handles what the backend sent and
says whether the job ended (`session.FitSession`, `preview.PreviewJob`,
`solve_operators.SolveSession`): looked at from a 0.1 s timer in the UI (`modal`), or run
to the end in `execute` in background mode, where timers never fire.
"""

from __future__ import annotations

import sys
import time

import bpy
from bpy.props import IntProperty, StringProperty

from . import runtime

TIMER_STEP = 0.1  # seconds between two looks at the backend in the UI
WAIT_STEP = 0.05  # seconds between two looks when `execute` waits for the job


def error_text(exc: BaseException) -> str:
    """An exception's message for the user (its type when it has none)."""
    return str(exc).strip() or type(exc).__name__


def redraw_areas(context, kinds: set[str]) -> None:
    """Redraw every area of these kinds (e.g. {"VIEW_3D"}) in every window."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in kinds:
                area.tag_redraw()


def refuse_while_busy(cls) -> bool:
    """An operator's poll: False, with the reason as its poll message, while a backend job
    runs (one at a time: a fit, a camera solve or a silhouette preview)."""
    job = runtime.running_job()
    if job is not None:
        cls.poll_message_set(f"{job[0].upper()}{job[1:]} is running: wait for it to end or "
                             "cancel it")
        return False
    return True


class TimerModal:
    """Mixin for a `bpy.types.Operator` that runs one backend job.

    The operator provides `_begin(context)` (starts the job, keeps it as ``self._job`` and
    returns it, or returns None after reporting why not) and, each returning the
    operator's result, `_finish(context, job)`, `_fail(context, job, exc)` and
    `_cancel(context, job)` (Esc, or Ctrl+C in background mode); optionally
    `_cancel_asked(job)` and `_show_progress(context, job)`.
    """

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if self._begin(context) is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_STEP, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        """Run the job to the end right here (background mode, scripts)."""
        job = self._begin(context)
        if job is None:
            return {"CANCELLED"}
        try:
            while not job.step():
                time.sleep(WAIT_STEP)
        except KeyboardInterrupt:
            return self._cancel(context, job)
        except Exception as exc:
            return self._fail(context, job, exc)
        return self._finish(context, job)

    def modal(self, context, event):
        """One look at the job per timer event; Esc cancels it."""
        job = self._job
        if event.type == "ESC" or self._cancel_asked(job):
            return self._cancel(context, job)
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            finished = job.step()
        except Exception as exc:
            self._stop_timer(context)
            return self._fail(context, job, exc)
        self._show_progress(context, job)
        if not finished:
            return {"PASS_THROUGH"}
        self._stop_timer(context)
        return self._finish(context, job)

    def _cancel_asked(self, job) -> bool:
        """True when the job is to be cancelled other than by Esc (e.g. a Cancel button)."""
        return False

    def _show_progress(self, context, job) -> None:
        """Show how far the job got (called after each step in the UI)."""

    def _stop_timer(self, context) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None

    def _report_failure(self, job: str, exc: BaseException) -> list[str]:
        """Report that ``job`` ("Fit", "Camera solve", ...) failed, also on stderr; the
        status lines for the panel."""
        message = error_text(exc)
        print(f"SoftRas: {job.lower()} failed: {message}", file=sys.stderr, flush=True)
        self.report({"ERROR"}, f"{job} failed: {message}")
        return [f"{job} failed: " + message.splitlines()[0]]


class BackendOptions:
    """Mixin for an operator that starts the backend: its Python and CPU threads, hidden
    options that override the preferences (headless.py and the tests set them)."""

    backend_command: StringProperty(
        name="Backend Python", default="", options={"HIDDEN", "SKIP_SAVE"},
        description="Command line of the backend's Python (empty: from the preferences)")
    threads: IntProperty(
        name="CPU Threads", default=-1, min=-1, options={"HIDDEN", "SKIP_SAVE"},
        description="The backend's CPU threads (-1: from the preferences, 0: automatic)")

    def _backend_launch(self, settings: dict) -> runtime.BackendLaunch:
        """How to start the backend: the preferences' ``settings`` with these options."""
        from .environment import split_command

        return runtime.backend_launch(settings, split_command(self.backend_command),
                                      None if self.threads < 0 else self.threads)
