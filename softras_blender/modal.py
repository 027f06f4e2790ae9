"""The timer plumbing shared by the add-on's modal operators (fit, silhouette preview,
camera solve).

Each runs a backend request and looks at it from a 0.1 s timer in the UI; in
background mode, where timers never fire, `invoke` runs the operator's `execute`
instead. The operator provides `_begin(context)` (the started job, or None after
reporting why not), `execute(context)` and `modal(context, event)`.
"""

from __future__ import annotations

import bpy

TIMER_STEP = 0.1  # seconds between two looks at the backend in the UI


class TimerModal:
    """Mixin for a `bpy.types.Operator` polled by a window-manager timer."""

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if self._begin(context) is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_STEP, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _stop_timer(self, context) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None
