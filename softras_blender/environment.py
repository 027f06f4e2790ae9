"""Which Python runs the backend, and how the add-on builds its managed environment.

Standard library only (no bpy): the preferences and operators call these with
values read from Blender, and the tests call them directly.

The backend needs torch (and, on NVIDIA GPUs, CuPy), which Blender's own Python
lacks. Where the backend runs is the user's choice in the preferences:
- "AUTO": Blender's own Python when it can import torch, else the managed environment;
- "BLENDER": Blender's own Python;
- "MANAGED": a virtual environment in the add-on's user folder, created by the
  "Install backend" button (torch, numpy, scikit-image, and CuPy for the CUDA
  version `nvidia-smi` reports), and downloads the salient-object model for silhouettes
  "Learned" (`model_download`);
- "CUSTOM": any command line that starts a Python with those packages
  (``/opt/envs/softras/bin/python``, ``conda run -n softras python``).

The packages come from the ``backend`` extra in pyproject.toml, the one place
they are declared, read by `backend.core.requirements` (build.py copies the list into
the add-on's zip; a source checkout reads pyproject.toml directly).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from . import model_download
from .backend.core.requirements import distribution_name

BACKEND_MODES = ("AUTO", "BLENDER", "MANAGED", "CUSTOM")
VENV_FOLDER = "backend-venv"
# PyTorch's CPU-only wheels (no CUDA libraries: a tenth of the download).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# CuPy publishes one wheel per CUDA major version.
CUPY_PACKAGES = {11: "cupy-cuda11x", 12: "cupy-cuda12x", 13: "cupy-cuda13x"}


def python_has_torch() -> bool:
    """True when the Python running this code (Blender's own) can import torch."""
    return importlib.util.find_spec("torch") is not None


def venv_python(venv_dir: str | os.PathLike) -> Path:
    """The interpreter inside a virtual environment folder."""
    venv_dir = Path(venv_dir)
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def backend_python(mode: str, custom_command: str, user_dir: str | os.PathLike,
                   blender_python: str = sys.executable,
                   blender_has_torch: bool | None = None) -> list[str]:
    """The command (argv) that starts the Python which runs the backend.

    mode: one of `BACKEND_MODES`; custom_command: the command line for "CUSTOM"
    (split like a shell would); user_dir: the add-on's writable folder holding
    the managed environment. Raises ValueError saying what to set up when the
    chosen Python is not there.
    """
    mode = mode.upper()
    if mode not in BACKEND_MODES:
        raise ValueError(f"backend mode must be one of {BACKEND_MODES}, got {mode!r}")
    if blender_has_torch is None:
        blender_has_torch = python_has_torch()
    managed = venv_python(Path(user_dir) / VENV_FOLDER)
    if mode == "CUSTOM":
        argv = split_command(custom_command)
        if not argv:
            raise ValueError("the backend command is empty: enter the path of a Python with "
                             "torch in the add-on's preferences, or pick another backend")
        return argv
    if mode == "BLENDER" or (mode == "AUTO" and blender_has_torch):
        return [blender_python]
    if not managed.is_file():
        raise ValueError(
            "the backend needs a Python with torch: Blender's own Python has none and the "
            f"managed environment ({managed.parent.parent}) does not exist yet; press "
            "'Install Backend' in the add-on's preferences, or set a custom backend command"
        )
    return [str(managed)]


def split_command(command: str) -> list[str]:
    """A command line -> argv, split like this platform's shell would."""
    return shlex.split(command, posix=os.name != "nt")


def cuda_version(nvidia_smi_output: str) -> tuple[int, int] | None:
    """The driver's CUDA version from ``nvidia-smi`` output, e.g. (12, 4); None if absent."""
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", nvidia_smi_output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def detect_cuda(timeout: float = 10.0) -> tuple[int, int] | None:
    """Ask ``nvidia-smi`` for the CUDA version; None when there is no NVIDIA driver."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cuda_version(out.stdout) if out.returncode == 0 else None


def cupy_package(cuda: tuple[int, int]) -> str:
    """The CuPy wheel for a CUDA version (major, minor)."""
    if cuda[0] not in CUPY_PACKAGES:
        raise ValueError(
            f"CUDA {cuda[0]}.{cuda[1]} has no CuPy wheel (supported majors: "
            f"{sorted(CUPY_PACKAGES)}): update the NVIDIA driver, or use the CPU device"
        )
    return CUPY_PACKAGES[cuda[0]]


def install_steps(base_python: str, venv_dir: str | os.PathLike, requirements: list[str],
                  cuda: tuple[int, int] | None) -> list[tuple[str, list[str]]]:
    """The commands that build the managed environment, as (label, argv) pairs.

    base_python: the interpreter that creates the venv (Blender's own Python);
    requirements: the backend's packages (`backend.core.requirements`); cuda: the
    detected CUDA version, or None for a CPU-only machine, which then gets
    PyTorch's CPU wheels and no CuPy.
    """
    py = str(venv_python(venv_dir))
    pip = [py, "-m", "pip", "install", "--upgrade", "--disable-pip-version-check"]
    torch = [r for r in requirements if re.match(r"torch\b", r)]
    others = [r for r in requirements if r not in torch]
    steps = [
        ("Create the environment", [base_python, "-m", "venv", str(venv_dir)]),
        ("Update pip", [py, "-m", "pip", "install", "--upgrade", "pip"]),
    ]
    if torch:
        index = [] if cuda else ["--index-url", TORCH_CPU_INDEX]
        label = "Install PyTorch" + ("" if cuda else " (CPU build)")
        steps.append((label, pip + index + torch))
    if others:
        steps.append(("Install " + ", ".join(distribution_name(r) for r in others),
                      pip + others))
    if cuda:
        steps.append((f"Install CuPy for CUDA {cuda[0]}.{cuda[1]}", pip + [cupy_package(cuda)]))
    return steps


def model_step(base_python: str, user_dir: str | os.PathLike,
               url: str = model_download.MODEL_URL, sha256: str = model_download.MODEL_SHA256,
               size: int = model_download.MODEL_SIZE) -> tuple[str, list[str]]:
    """The installer's step that downloads the salient-object model (`model_download`)
    into the add-on's user folder, checked against its pinned SHA-256 and size, as
    (label, argv). url, sha256, size: the pinned model's unless a test names another."""
    script = Path(model_download.__file__).resolve()
    argv = [base_python, str(script), url, sha256, str(size),
            str(model_download.model_path(user_dir))]
    return (f"Download the salient-object model ({model_download.MODEL_FILE})", argv)


class StepRunner:
    """Runs (label, argv) steps one after another without blocking, logging to a file.

    The preferences' install operator calls `poll` from a timer; `run_to_end`
    does the same synchronously (background mode). Each step's output is
    appended to ``log_path``.
    """

    def __init__(self, steps: list[tuple[str, list[str]]], log_path: str | os.PathLike,
                 env: dict | None = None):
        self.steps = list(steps)
        self.log_path = Path(log_path)
        self.env = env
        self.index = -1  # the step running now
        self.returncode: int | None = None  # of the whole run, once finished
        self._process: subprocess.Popen | None = None
        self._log = None

    @property
    def label(self) -> str:
        if 0 <= self.index < len(self.steps):
            return self.steps[self.index][0]
        return "Done" if self.returncode == 0 else "Not running"

    @property
    def progress(self) -> float:
        """Fraction of the steps finished, in [0, 1]."""
        if not self.steps:
            return 1.0
        return max(0, self.index) / len(self.steps) if self.returncode is None else 1.0

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _end
        self._next()

    def poll(self) -> bool:
        """Advance if the current step ended; True once every step is done or one failed."""
        if self.finished:
            return True
        code = self._process.poll()
        if code is None:
            return False
        if code != 0:
            self._end(code, f"'{self.label}' failed with exit code {code}")
            return True
        self._next()
        return self.finished

    def run_to_end(self, interval: float = 0.2) -> int:
        import time

        if self._process is None and not self.finished:
            self.start()
        while not self.poll():
            time.sleep(interval)
        return self.returncode

    def cancel(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if not self.finished:
            self._end(-1, "cancelled")

    def log_tail(self, lines: int = 8) -> list[str]:
        """The last lines of the log (for the preferences panel)."""
        if not self.log_path.is_file():
            return []
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip() for line in f.readlines()[-lines:]]

    def _next(self) -> None:
        self.index += 1
        if self.index >= len(self.steps):
            self._end(0, "all steps finished")
            return
        label, argv = self.steps[self.index]
        self._log.write(f"=== {label}: {shlex.join(argv)}\n")
        self._log.flush()
        try:
            self._process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=self.env)
        except OSError as exc:
            self._end(-1, f"'{label}' could not start: {exc}")

    def _end(self, code: int, message: str) -> None:
        self.returncode = code
        if self._log is not None:
            self._log.write(f"=== {message}\n")
            self._log.close()
            self._log = None
