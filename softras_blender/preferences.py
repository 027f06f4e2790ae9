"""Add-on preferences: which Python runs the backend, on which device and CPU threads,
and its set-up (install, check)."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty
from bpy.types import AddonPreferences

from . import environment, fit_options, model_download, operators, runtime


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
                         items=fit_options.DEVICE_ITEMS, default="AUTO")
    threads: IntProperty(
        name="CPU Threads", default=0, min=0,
        description="Threads the backend computes with on the CPU (0: automatic, every "
                    "physical core); fewer leave cores to Blender and other programs")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_mode")
        if self.backend_mode == "CUSTOM":
            col.prop(self, "custom_command")
        col.prop(self, "device")
        col.prop(self, "threads")
        try:
            python = " ".join(runtime.backend_python(runtime.settings_of(self)))
            col.label(text=f"Backend runs with: {python}", icon="CONSOLE")
        except ValueError as exc:
            col.label(text=str(exc).split(":")[0], icon="ERROR")

        box = layout.box()
        box.label(text="Managed Environment", icon="PACKAGE")
        venv = runtime.user_dir() / environment.VENV_FOLDER
        state = "installed" if environment.venv_python(venv).is_file() else "not installed"
        box.label(text=f"{venv} ({state})")
        model = model_download.installed_model(runtime.user_dir())
        box.label(text=f"Salient-object model: {model}" if model else
                  "Salient-object model: not installed (Learned then needs a model file)")
        if not bpy.app.online_access:
            box.label(text="Online access is off (Preferences > System > Network): "
                           "installing needs it", icon="INFO")
        install = runtime.install_state()
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
        for line in runtime.backend_report():
            box.label(text=line)


classes = (SoftRasPreferences,)


register, unregister = bpy.utils.register_classes_factory(classes)
