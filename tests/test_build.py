"""build.py makes one installable zip that Blender's own tools accept, and that installs,
registers, runs its bundled backend, and unregisters cleanly in a throwaway Blender."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from backend.core.requirements import pyproject_requirements

pytest.importorskip("bpy")

pytestmark = pytest.mark.blender

REPO = Path(__file__).resolve().parent.parent
# build.py by path: a module named "build" could also be PyPA's build package.
_spec = importlib.util.spec_from_file_location("softras_build", REPO / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

# Runs in a fresh Python with BLENDER_USER_RESOURCES pointing at a temporary folder, so
# the installation never touches the real user's Blender configuration.
INSTALL_SCRIPT = r"""
import json, os, sys
import bpy, addon_utils

zip_path = sys.argv[1]
module = "bl_ext.user_default.softras_blender"
result = {}
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                         enable_on_install=True)

def registered():
    return {"panel": hasattr(bpy.types, "SOFTRAS_PT_fit"),
            "operator": hasattr(bpy.types, "SOFTRAS_OT_fit"),
            "settings": hasattr(bpy.types.Scene, "softras"),
            "enabled": module in bpy.context.preferences.addons}

result["installed"] = registered()
result["operator_module"] = bpy.types.SOFTRAS_OT_fit.__module__
folder = os.path.dirname(sys.modules[module].__file__)
result["addon_folder"] = folder
before = sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, files in os.walk(folder) for f in files)
bpy.ops.softras.check_backend()
result["backend_report"] = sys.modules[module + ".runtime"].backend_report()
after = sorted(os.path.relpath(os.path.join(d, f), folder)
               for d, _, files in os.walk(folder) for f in files)
result["written_into_addon"] = sorted(set(after) - set(before))
result["user_dir"] = str(sys.modules[module + ".runtime"].user_dir())
addon_utils.disable(module, default_set=True)
result["disabled"] = registered()
addon_utils.enable(module, default_set=True)
result["reenabled"] = registered()
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    return build.build(tmp_path_factory.mktemp("dist"))


def test_zip_carries_addon_backend_and_kernels_and_nothing_else(built_zip):
    names = zipfile.ZipFile(built_zip).namelist()
    assert built_zip.name == "softras_blender-0.1.0.zip"
    for required in ("__init__.py", "blender_manifest.toml", "operators.py", "headless.py",
                     "backend/__main__.py", "backend/fit/fitting.py", "backend/core/protocol.py",
                     "kernels/soft_raster.cu", "backend_requirements.txt"):
        assert required in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")
                or n.startswith("tests/") or n.startswith("dist/")]
    requirements = zipfile.ZipFile(built_zip).read("backend_requirements.txt").decode()
    for requirement in pyproject_requirements(REPO / "pyproject.toml"):
        assert requirement in requirements


def test_blenders_validator_accepts_the_zip(built_zip):
    tool = build.blender_ext_path()
    done = subprocess.run([sys.executable, str(tool), "validate", str(built_zip)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_manifest_and_pyproject_versions_must_agree(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "read_versions", lambda: ("0.2.0", "0.1.0"))
    with pytest.raises(SystemExit, match="make them equal"):
        build.build(tmp_path)


def test_installs_registers_runs_its_backend_and_reenables(built_zip, tmp_path):
    user = tmp_path / "blender-user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTRAS_")}
    # The installed add-on must find its backend inside itself, not via the checkout.
    env["PYTHONPATH"] = ""
    env["BLENDER_USER_RESOURCES"] = str(user)
    done = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(built_zip)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                          check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    every = {"panel": True, "operator": True, "settings": True, "enabled": True}
    assert result["installed"] == every
    assert result["operator_module"] == "bl_ext.user_default.softras_blender.operators"
    assert Path(result["addon_folder"]).is_relative_to(user)
    assert Path(result["user_dir"]).is_relative_to(user / "extensions" / ".user")
    assert any(line.startswith("PyTorch") for line in result["backend_report"])
    assert result["written_into_addon"] == []
    assert result["disabled"] == {k: False for k in every}
    assert result["reenabled"] == every
