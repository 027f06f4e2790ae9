"""Solve the cameras of a folder of photos: pycolmap features, matching and incremental
mapping on the CPU, each stage in a child process that a cancel terminates.

    result = solve_cameras("photos/", on_progress=print)
    write_colmap_model(result, "photos/sparse")     # import it like any COLMAP model

The result is normalised by default (`backend.sfm.normalise.normalise_scene`): Z up,
the subject at the origin, unit size or the scale of a known camera distance.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import queue as queue_module
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..core.camera import CameraMatrices
from ..core.requirements import backend_requirements, requirement_for
from .normalise import normalise_scene
from .result import (
    PycolmapMissing,
    SfmError,
    SolveCancelled,
    SolvedCamera,
    SolveResult,
    UnregisteredImage,
)

# Photo files solved for (their sizes are read from the headers, as for camera import).
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
ORDERINGS = ("auto", "exhaustive", "sequential")
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")  # pinhole: Blender cameras have no distortion
MIN_PHOTOS = 3
EXHAUSTIVE_LIMIT = 60  # "auto" matches all pairs up to this many photos, else sequentially
POLL_SECONDS = 0.1  # how often a waiting solve checks should_cancel

Progress = Callable[[str, float, str], None]


def pycolmap_install_command() -> str:
    """The pip command that installs the pinned pycolmap into this Python."""
    try:
        requirement = requirement_for("pycolmap", backend_requirements(_repository_root()))
    except ValueError:
        requirement = "pycolmap"
    return f"{sys.executable} -m pip install '{requirement}'"


def _repository_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def list_photos(images) -> tuple[Path, list[str]]:
    """A folder, or a list of image files -> (common folder, names relative to it with '/'
    separators, in natural order: view_2 before view_10). Raises SfmError for a missing
    folder or file, or fewer than `MIN_PHOTOS` photos."""
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise SfmError(f"{folder} is not a folder: give the folder that holds the photos")
        paths = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES]
    else:
        paths = [Path(p) for p in images]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SfmError(f"these photos do not exist: {', '.join(missing[:5])}")
        folder = Path(os.path.commonpath([p.resolve().parent for p in paths])) if paths else None
    if len(paths) < MIN_PHOTOS:
        raise SfmError(
            f"found {len(paths)} photo(s) ({', '.join(PHOTO_SUFFIXES)}) in {images}; solving "
            f"cameras needs at least {MIN_PHOTOS}, and works best with 10 or more taken 10 to "
            "20 degrees apart around the subject")
    names = sorted((p.resolve().relative_to(folder.resolve()).as_posix() for p in paths),
                   key=_natural_key)
    return folder, names


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _check_pycolmap() -> None:
    if importlib.util.find_spec("pycolmap") is None:
        raise PycolmapMissing("solving cameras needs pycolmap, which this Python lacks; install "
                              f"it with: {pycolmap_install_command()}")


def _run_stage(stage: str, kwargs: dict, on_progress: Progress,
               should_cancel: Callable[[], bool]):
    """Run one `backend.sfm.stages` stage in a child process; returns its payload.

    Polls ``should_cancel`` every `POLL_SECONDS`: when it returns True the child is
    terminated and `SolveCancelled` is raised (by the caller, which knows the times)."""
    from . import stages

    context = multiprocessing.get_context("spawn")  # no fork of a process running torch
    messages = context.Queue()
    child = context.Process(target=stages.run_stage, args=(stage, kwargs, messages),
                            name=f"sfm-{stage}", daemon=True)
    child.start()
    finished = False  # the child sent its result and is exiting by itself
    try:
        while True:
            if should_cancel():
                raise _Cancelled
            try:
                kind, *values = messages.get(timeout=POLL_SECONDS)
            except queue_module.Empty:
                if child.is_alive():
                    continue
                try:  # the child may have exited just after its last message
                    kind, *values = messages.get(timeout=1.0)
                except queue_module.Empty:
                    raise SfmError(f"the {stage} stage ended (exit code {child.exitcode}) "
                                   "without a result: see the console for COLMAP's "
                                   "message") from None
            if kind == "progress":
                on_progress(stage, *values)
                continue
            finished = True
            if kind == "error":
                raise SfmError(f"the {stage} stage failed: {values[0]}")
            on_progress(stage, 1.0, "done")
            return values[0]
    finally:
        if finished:
            child.join(timeout=5.0)
        if child.is_alive():
            child.kill()  # SIGKILL: COLMAP's SIGTERM handler would print a stack trace
        child.join()
        messages.close()


class _Cancelled(Exception):
    """Internal: should_cancel returned True inside `_run_stage`."""


def solve_cameras(
    images,
    *,
    ordering: str = "auto",
    camera_model: str = "SIMPLE_PINHOLE",
    on_progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    normalise: bool = True,
    up="auto",
    known_distance: float | None = None,
    overlap: int = 10,
    max_image_size: int = 3200,
    num_threads: int = -1,
    work_dir=None,
) -> SolveResult:
    """Solve the cameras of a set of photos.

    images: a folder of photos (.jpg, .jpeg, .png) or a list of image files.
    ordering: "exhaustive" matches every pair; "sequential" each photo with the next
        ``overlap`` (a turntable or walk-around in file-name order); "auto" picks
        exhaustive up to `EXHAUSTIVE_LIMIT` photos.
    camera_model: "SIMPLE_PINHOLE" (one focal length) or "PINHOLE" (fx, fy); photos of
        one size share one camera, otherwise each photo has its own.
    on_progress(stage, fraction, message): stage in `result.STAGES`, fraction in [0, 1].
    should_cancel(): polled about every `POLL_SECONDS`; True stops the solve, raising
        `SolveCancelled`.
    normalise, up, known_distance: see `normalise_scene` (normalise=False keeps COLMAP's
        arbitrary frame).
    work_dir: where COLMAP's database and models go (default: a temporary folder).
    Raises SfmError for bad input, a missing pycolmap, or photos that do not register.
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {ORDERINGS}, got {ordering!r}")
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {CAMERA_MODELS}, got {camera_model!r}")
    folder, names = list_photos(images)
    _check_pycolmap()
    if ordering == "auto":
        ordering = "exhaustive" if len(names) <= EXHAUSTIVE_LIMIT else "sequential"
    on_progress = on_progress or (lambda stage, fraction, message: None)
    should_cancel = should_cancel or (lambda: False)
    with tempfile.TemporaryDirectory(prefix="softras_sfm_") as scratch:
        work = Path(work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        database = work / "database.db"
        if database.exists():
            database.unlink()  # a stale database would mix in an earlier solve's photos
        (work / "sparse").mkdir(exist_ok=True)
        common = {"database": str(database), "num_threads": num_threads}
        stage_kwargs = {
            "features": {**common, "image_dir": str(folder), "names": names,
                         "camera_model": camera_model, "max_image_size": max_image_size,
                         "shared_camera": _one_size(folder, names)},
            "matching": {**common, "ordering": ordering, "overlap": overlap},
            "mapping": {**common, "image_dir": str(folder), "output": str(work / "sparse"),
                        "count": len(names)},
        }
        times, payload = {}, None
        for stage, kwargs in stage_kwargs.items():
            start = time.perf_counter()
            try:
                payload = _run_stage(stage, kwargs, on_progress, should_cancel)
            except _Cancelled:
                times[stage] = time.perf_counter() - start
                raise SolveCancelled(stage, times) from None
            times[stage] = time.perf_counter() - start
    result = _result(folder, names, payload, times, ordering)
    if normalise:
        result = normalise_scene(result, up=up, known_distance=known_distance)
    return result


def _one_size(folder: Path, names: Sequence[str]) -> bool:
    """True when every photo has the same pixel size (they then share one camera)."""
    from ..core.camera_files import image_size

    return len({image_size(folder / name) for name in names}) == 1


def _result(folder: Path, names: list[str], payload: dict, times: dict,
            ordering: str) -> SolveResult:
    """The mapping stage's plain data -> a SolveResult, cameras in the photos' order."""
    unregistered = tuple(UnregisteredImage(name, payload["unregistered"][name])
                         for name in names if name in payload["unregistered"])
    model = payload["model"]
    if model is None:
        reasons = "; ".join(f"{u.image}: {u.reason}" for u in unregistered[:3])
        raise SfmError(f"none of the {len(names)} photos could be placed ({reasons}). Photos "
                       "need overlapping, textured views of a still subject")
    index = {name: i for i, name in enumerate(model["names"])}
    cameras = []
    for name in (n for n in names if n in index):
        i = index[name]
        pose = np.eye(4)
        pose[:3, :] = model["poses"][i]
        width, height = (int(v) for v in model["sizes"][i])
        cameras.append(SolvedCamera(
            name=Path(name).stem, image=name,
            camera=CameraMatrices(np.asarray(model["intrinsics"][i], dtype=np.float64), pose,
                                  width, height, False),
            model=model["models"][i], observations=int(model["observations"][i])))
    return SolveResult(folder, tuple(cameras), unregistered,
                       np.asarray(model["points"], dtype=np.float64), times, ordering)
