"""Add-on preferences: which Python runs the backend, on which device, and its set-up."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import AddonPreferences

from . import environment

ADDON_DIR = Path(__file__).resolve().parent
# Where a source checkout (headless.py, tests) keeps its writable data; an installed
# extension uses Blender's per-extension user folder instead.
SOURCE_USER_DIR_ENV = "SOFTRAS_USER_DIR"

DEVICES = (
    ("AUTO", "Auto", "The GPU (CUDA) when the backend finds one, else the CPU"),
    ("CPU", "CPU", "Fit on the CPU (pure PyTorch)"),
    ("CUDA", "CUDA", "Fit on an NVIDIA GPU with the CUDA kernels; fails if there is none"),
)


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


def get(context=None) -> SoftRasPreferences | None:
    """This add-on's preferences; None when it was registered without Blender's add-on
    system (``softras_blender.register()`` called directly)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def backend_settings(context=None) -> dict:
    """Plain backend settings {"mode", "custom_command", "device"} from the preferences,
    or the preferences' defaults when the add-on runs without them."""
    prefs = get(context)
    if prefs is None:
        return {"mode": "AUTO", "custom_command": "", "device": "AUTO"}
    return _settings_of(prefs)


def _settings_of(prefs) -> dict:
    return {"mode": prefs.backend_mode, "custom_command": prefs.custom_command,
            "device": prefs.device}


def backend_command(settings: dict) -> list[str]:
    """The Python (argv) that runs the backend for these settings; ValueError if missing."""
    return environment.backend_python(settings["mode"], settings["custom_command"],
                                      user_dir(), sys.executable)


class SoftRasPreferences(AddonPreferences):
    bl_idname = __package__

    backend_mode: EnumProperty(
        name="Backend Python",
        description="The Python that runs the fitting backend (it needs PyTorch)",
        items=(
            ("AUTO", "Automatic",
             "Blender's own Python if it has PyTorch, else the managed environment"),
            ("BLENDER", "Blender's Python", "Blender's own Python (PyTorch installed into it)"),
            ("MANAGED", "Managed Environment",
             "A virtual environment in the add-on's user folder (see Install Backend)"),
            ("CUSTOM", "Custom Command", "Any Python with PyTorch, given as a command line"),
        ),
        default="AUTO",
    )
    custom_command: StringProperty(
        name="Command",
        description="Command line that starts a Python with PyTorch, e.g. "
                    "/opt/envs/softras/bin/python or 'conda run -n softras python'",
        default="",
    )
    device: EnumProperty(name="Device", description="Where the backend fits",
                         items=DEVICES, default="AUTO")

    def draw(self, context):
        from . import operators

        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_mode")
        if self.backend_mode == "CUSTOM":
            col.prop(self, "custom_command")
        col.prop(self, "device")
        try:
            python = " ".join(backend_command(_settings_of(self)))
            col.label(text=f"Backend runs with: {python}", icon="CONSOLE")
        except ValueError as exc:
            col.label(text=str(exc).split(":")[0], icon="ERROR")

        box = layout.box()
        box.label(text="Managed Environment", icon="PACKAGE")
        venv = user_dir() / environment.VENV_FOLDER
        state = "installed" if environment.venv_python(venv).is_file() else "not installed"
        box.label(text=f"{venv} ({state})")
        if not bpy.app.online_access:
            box.label(text="Online access is off (Preferences > System > Network): "
                           "installing needs it", icon="INFO")
        install = operators.install_state()
        row = box.row()
        row.enabled = install is None or install.finished
        row.operator(operators.SOFTRAS_OT_install_backend.bl_idname, icon="IMPORT")
        if install is not None:
            box.progress(factor=install.progress, type="BAR", text=install.label)
            for line in install.log_tail():
                box.label(text=line[:120])

        box = layout.box()
        box.label(text="Backend Check", icon="CHECKMARK")
        box.operator(operators.SOFTRAS_OT_check_backend.bl_idname, icon="PLAY")
        for line in operators.backend_report():
            box.label(text=line)


classes = (SoftRasPreferences,)


register, unregister = bpy.utils.register_classes_factory(classes)
