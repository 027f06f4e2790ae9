"""``python -m backend serve``: the backend process, speaking frames on stdin/stdout.

Logging goes to stderr; stdout carries only protocol frames (anything else that
writes to file descriptor 1, a stray print or a C library, is redirected to stderr).
It never opens a network port. Before anything heavy is imported it checks that
this Python has what the backend needs, and otherwise says exactly what is missing
and how to install it (stderr, plus an error frame when numpy is there to write one),
then exits with code 3. Before that it chooses its CPU threading (``--threads``, see
backend/core/threads.py), which must happen before torch is imported.

Written to run (and fail clearly) on older Pythons too: no 3.10+ syntax here.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path

from .core import threads
from .core.requirements import backend_requirements, requirement_for
from .process.exit_codes import EXIT_STARTUP_ERROR

MIN_PYTHON = (3, 11)
# Import name -> pip distribution of what the backend imports at start-up.
REQUIRED_MODULES = {"numpy": "numpy", "torch": "torch", "skimage": "scikit-image",
                    "scipy": "scipy"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="softras-blender's fitting backend (talks frames on stdin/stdout; "
                    "see docs/protocol.md)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve fit requests on stdin/stdout")
    serve.add_argument("--heartbeat", type=float, default=1.0,
                       help="seconds of silence after which a heartbeat frame is sent")
    serve.add_argument("--max-vertex-rate", type=float, default=10.0,
                       help="vertices messages per second at most")
    serve.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--threads", type=int, default=0,
                       help="CPU threads for torch (0 = automatic: all physical cores, or "
                            "OMP_NUM_THREADS when set); see backend/core/threads.py")
    args = parser.parse_args(argv)
    if args.heartbeat <= 0 or args.max_vertex_rate <= 0:
        parser.error("--heartbeat and --max-vertex-rate must be positive")
    try:
        # Before anything imports torch: its OpenMP runtime reads these settings once.
        thread_settings = threads.apply(args.threads)
    except ValueError as exc:
        parser.error(str(exc))

    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("backend").info(
        "CPU threads: %d (%s), wait policy %s", thread_settings.count, thread_settings.origin,
        thread_settings.wait_policy)
    problem = dependency_problem()
    if problem and "numpy" in problem[1]:
        # Without numpy there is no protocol module, so stderr is the only channel.
        sys.stderr.write(problem[0] + "\n")
        return EXIT_STARTUP_ERROR

    reader, writer = _protocol_streams()
    from .core import messages
    from .core.protocol import write_frame
    from .process.service import Service

    if problem:
        sys.stderr.write(problem[0] + "\n")
        write_frame(writer, messages.error(None, problem[0], kind="missing_dependency",
                                           fatal=True))
        return EXIT_STARTUP_ERROR
    service = Service(reader, writer, heartbeat_interval=args.heartbeat,
                      max_vertex_rate=args.max_vertex_rate)
    return service.run()


def dependency_problem():
    """None when this Python can run the backend, else (message, missing names).

    The message names the interpreter, what is missing, and the exact pip command.
    """
    python = sys.executable or "python"
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return (f"softras-blender backend: {python} is Python {version}, but the backend needs "
                f"Python {need} or newer. Choose a Python {need}+ for the backend in the "
                "add-on's preferences.", ["python"])
    missing = [dist for name, dist in REQUIRED_MODULES.items()
               if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    specs = " ".join(f'"{_requirement(dist)}"' for dist in missing)
    message = (
        f"softras-blender backend: the Python at {python} (Python {version}) lacks "
        f"{', '.join(missing)}, which the backend needs.\n"
        f"Install {'them' if len(missing) > 1 else 'it'} into that Python:\n"
        f"    \"{python}\" -m pip install {specs}\n"
        "(on a machine with an NVIDIA GPU also install CuPy, e.g. cupy-cuda12x, for the CUDA "
        "path), or choose a Python that has these packages for the backend in the add-on's "
        "preferences."
    )
    return message, missing


def _requirement(distribution: str) -> str:
    """The pinned requirement for a distribution (see `backend.core.requirements`), else
    the bare name."""
    try:
        requirements = backend_requirements(Path(__file__).resolve().parent.parent)
    except (ImportError, OSError, ValueError):
        requirements = []
    return requirement_for(distribution, requirements)


def _protocol_streams():
    """Private binary streams on the original stdin/stdout; fds 0 and 1 are then pointed
    at /dev/null and stderr so nothing else can read or corrupt the frames."""
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return os.fdopen(in_fd, "rb", buffering=1 << 16), os.fdopen(out_fd, "wb", buffering=1 << 16)


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Skip interpreter teardown: a fit thread stuck in a long kernel must not hang the exit.
    os._exit(code)
