"""The add-on's runtime: its user folder, how the backend is launched, and the live state
of this Blender session (the running fit, the last outcome, the installer, the last
backend check).

Operators, panels and preferences import this module and it imports none of them, so
the add-on's dependencies run one way. The live state is plain module state
(`state`), so it is never saved into a .blend file nor undone.
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import environment
from .backend.core import messages
from .client import backend_root, default_backend_command

ADDON_DIR = Path(__file__).resolve().parent
# Where a source checkout (headless.py, tests) keeps its writable data; an installed
# extension uses Blender's per-extension user folder instead.
SOURCE_USER_DIR_ENV = "SOFTRAS_USER_DIR"


def user_dir() -> Path:
    """The add-on's writable folder (managed environment, kernel cache, logs), created.

    An installed extension gets ``bpy.utils.extension_path_user``. Run from a source
    checkout (``softras_blender`` imported by path, as headless.py and the tests do)
    it is ``$SOFTRAS_USER_DIR``, else ``.cache/softras_blender`` in the checkout.
    Never the add-on's own folder.
    """
    if __package__.startswith("bl_ext."):
        path = bpy.utils.extension_path_user(__package__, create=True)
        if not path:
            raise RuntimeError("Blender could not create the extension's user folder")
        return Path(path)
    path = Path(os.environ.get(SOURCE_USER_DIR_ENV) or ADDON_DIR.parent / ".cache" / __package__)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the backend's settings and launch -----------------------------------------------------

DEFAULT_SETTINGS = {"mode": "AUTO", "custom_command": "", "device": "AUTO", "threads": 0}


def addon_preferences(context=None):
    """This add-on's `preferences.SoftRasPreferences`; None when it was registered
    without Blender's add-on system (``softras_blender.register()`` called directly)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def backend_settings(context=None) -> dict:
    """Plain backend settings {"mode", "custom_command", "device", "threads"} from the
    preferences, or `DEFAULT_SETTINGS` when the add-on runs without them."""
    prefs = addon_preferences(context)
    return dict(DEFAULT_SETTINGS) if prefs is None else settings_of(prefs)


def settings_of(prefs) -> dict:
    """The plain backend settings of a preferences object (see `backend_settings`)."""
    return {"mode": prefs.backend_mode, "custom_command": prefs.custom_command,
            "device": prefs.device, "threads": prefs.threads}


def backend_python(settings: dict) -> list[str]:
    """The Python (argv) that runs the backend for these settings; ValueError if missing."""
    return environment.backend_python(settings["mode"], settings["custom_command"],
                                      user_dir(), sys.executable)


@dataclass(frozen=True)
class BackendLaunch:
    """How to start the backend process: `client.BackendClient`'s arguments."""

    command: list[str]
    env: dict
    cwd: str


def backend_launch(settings: dict, python: list[str] | None = None,
                   threads: int | None = None) -> BackendLaunch:
    """The launch for these backend settings; ``python`` (an argv prefix) and ``threads``
    (0: automatic) override theirs. ValueError (saying what to set up) when there is no
    Python for the backend."""
    command = default_backend_command(python or backend_python(settings),
                                      settings["threads"] if threads is None else threads)
    return BackendLaunch(command, backend_environment(user_dir()), str(backend_root()))


def backend_environment(user: Path) -> dict:
    """The backend process' environment: ours, with the add-on's backend importable and
    CuPy's compiled kernels cached in the add-on's user folder."""
    env = dict(os.environ)
    root = str(backend_root())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["CUPY_CACHE_DIR"] = str(user / "cupy-cache")
    # Compiled Python files go to the user folder too, never into the add-on's.
    env["PYTHONPYCACHEPREFIX"] = str(user / "pycache")
    return env


def threads_text(hello: dict | None) -> str | None:
    """What the backend's hello says about its CPU threads, for the user; None when it
    does not say (an older backend, or not started yet)."""
    chosen = messages.hello_threads(hello or {})
    if chosen is None:
        return None
    count, policy = chosen
    return f"CPU threads: {count} (wait policy {policy})"


# -- the live state ------------------------------------------------------------------------


class Outcome(enum.Enum):
    """How the last "Fit to Images" ended."""

    FITTED = "fitted"  # finished (or diverged and kept its last good mesh)
    CANCELLED = "cancelled"  # by the user or the backend; the mesh was restored
    BAD_INPUT = "bad_input"  # the scene or the settings cannot be fitted; nothing ran
    FAILED = "failed"  # the backend could not start, or the fit failed


@dataclass
class State:
    """The add-on's state in this Blender session."""

    session: object | None = None  # the running `session.FitSession`
    status: list[str] = field(default_factory=list)  # the last fit's outcome, as lines
    outcome: Outcome | None = None
    last_result: dict | None = None  # `session.FitSession.summary` of the last finished fit
    install: environment.StepRunner | None = None  # the managed environment's installer
    backend_report: list[str] = field(default_factory=list)  # what Check Backend found
    preview: object | None = None  # the running `preview.PreviewJob`
    preview_status: list[str] = field(default_factory=list)  # what the last preview found
    solve: object | None = None  # the running `solve_operators.SolveSession`
    solve_status: list[str] = field(default_factory=list)  # what the last camera solve did


state = State()


def running_job() -> str | None:
    """The backend job running now ("a fit", "a camera solve", "a silhouette preview"), or
    None; the operators start one at a time."""
    for job, name in ((state.session, "a fit"), (state.solve, "a camera solve"),
                      (state.preview, "a silhouette preview")):
        if job is not None:
            return name
    return None


def running_session():
    """The fit running in the UI, or None."""
    return state.session


def last_status() -> list[str]:
    """Lines describing the last fit's outcome (for the panel)."""
    return list(state.status)


def last_outcome() -> Outcome | None:
    return state.outcome


def last_result() -> dict | None:
    """Plain data about the last finished fit (`session.FitSession.summary`)."""
    return state.last_result


def install_state() -> environment.StepRunner | None:
    """The managed-environment installer, or None."""
    return state.install


def backend_report() -> list[str]:
    """What the last "Check Backend" found, as lines."""
    return list(state.backend_report)


def preview_status() -> list[str]:
    """What the last "Preview Silhouettes" found (or that it runs), as lines."""
    if state.preview is not None:
        return ["Finding silhouettes..."]
    return list(state.preview_status)
