"""Build the installable Blender extension zip into dist/ and validate it.

    python build.py                 # -> dist/softras_blender-<version>.zip
    python build.py --output-dir D --blender-ext path/to/blender_ext.py

One zip carries everything: the add-on (softras_blender/), the backend package
(backend/) and the CUDA kernels (kernels/) inside the add-on's folder, plus
backend_requirements.txt (the ``backend`` extra of pyproject.toml, which the
add-on's "Install Backend" button installs). No tests, no caches.

How the add-on reaches the backend: the add-on imports the torch-free backend
modules relatively (``from .backend.core import camera``), and the backend process runs
``python -m backend serve`` from the add-on's folder. In the zip, backend/ and
kernels/ are real folders inside the add-on. In the repository they are git
symlinks (softras_blender/backend -> ../backend, softras_blender/kernels ->
../kernels), so the same relative imports work from a checkout; pytest only
collects tests/ and ruff does not follow symlinked folders, so nothing is seen
twice. This script never relies on the symlinks: it copies the add-on's own files
and then the repository's backend/ and kernels/ folders.

The zip is built and validated by Blender's own extension tool, blender_ext.py,
which ships inside the bpy wheel (standard library only, run as a subprocess).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from backend.core.requirements import (
    REQUIREMENTS_FILE,
    pyproject_requirements,
    requirements_text,
)

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "softras_blender"
BUNDLED = ("backend", "kernels")  # repository folders copied into the add-on
MANIFEST = ROOT / "blender_manifest.toml"  # copied to the add-on folder's top
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "tests")


def blender_ext_path() -> Path:
    """blender_ext.py inside the installed bpy wheel."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the bpy module is not installed (pip install bpy==5.0.1), "
                         "or pass --blender-ext path/to/blender_ext.py")
    bpy_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(bpy_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise SystemExit(f"error: no blender_ext.py under {bpy_dir}: pass --blender-ext")
    return found[-1]


def read_versions() -> tuple[str, str]:
    """(manifest version, pyproject version)."""
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return manifest["version"], pyproject["project"]["version"]


def stage(target: Path) -> Path:
    """Copy the add-on with backend/ and kernels/ inside into ``target``/softras_blender."""
    out = target / ADDON.name
    out.mkdir(parents=True)
    shutil.copy2(MANIFEST, out / MANIFEST.name)
    for item in sorted(ADDON.iterdir()):
        if item.name in BUNDLED or IGNORE(str(ADDON), [item.name]):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, ignore=IGNORE)
        else:
            shutil.copy2(item, out / item.name)
    for name in BUNDLED:
        shutil.copytree(ROOT / name, out / name, ignore=IGNORE)
    (out / REQUIREMENTS_FILE).write_text(
        requirements_text(pyproject_requirements(ROOT / "pyproject.toml")), encoding="utf-8")
    return out


def check_zip(path: Path) -> None:
    """The zip holds the add-on, the backend and the kernels, and nothing it should not."""
    names = zipfile.ZipFile(path).namelist()
    required = ["__init__.py", "blender_manifest.toml", "client.py", REQUIREMENTS_FILE,
                "backend/__init__.py", "backend/__main__.py", "backend/core/camera.py",
                "backend/core/protocol.py"]
    missing = [n for n in required if n not in names]
    if not any(n.startswith("kernels/") for n in names):
        missing.append("kernels/")
    if missing:
        raise SystemExit(f"error: {path.name} lacks {', '.join(missing)}")
    junk = [n for n in names if "__pycache__" in n or n.endswith(".pyc")
            or n.startswith("tests/")]
    if junk:
        raise SystemExit(f"error: {path.name} contains {', '.join(junk[:5])}")


def run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, args[1:3]))} failed:\n{output}")
    if output:
        print(output)


def build(output_dir: Path, blender_ext: Path | None = None) -> Path:
    """Build and validate the zip; returns its path."""
    manifest_version, project_version = read_versions()
    if manifest_version != project_version:
        raise SystemExit(f"error: blender_manifest.toml says version {manifest_version}, "
                         f"pyproject.toml {project_version}: make them equal")
    tool = blender_ext or blender_ext_path()
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / f"softras_blender-{manifest_version}.zip"
    zip_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="softras_build_") as tmp:
        source = stage(Path(tmp))
        run([sys.executable, str(tool), "build", "--source-dir", str(source),
             "--output-dir", str(output_dir)])
    if not zip_path.is_file():
        raise SystemExit(f"error: blender_ext.py did not write {zip_path}")
    run([sys.executable, str(tool), "validate", str(zip_path)])
    check_zip(zip_path)
    return zip_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--blender-ext", type=Path, default=None,
                        help="Blender's extension tool (default: the one in the bpy wheel)")
    args = parser.parse_args(argv)
    path = build(args.output_dir.resolve(), args.blender_ext)
    print(f"built and validated {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
