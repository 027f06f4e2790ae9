"""Every message between the add-on and the backend: its fields, how it is built and parsed.

Standard library and numpy only: Blender's Python (softras_blender/client.py) and the
backend process (backend/process/service.py) both build and read messages here, and
nowhere else. `backend.core.protocol` turns these dicts into frames and back and checks
that each carries its type's fields (`MESSAGE_FIELDS`); docs/protocol.md describes them.

    message = start_fit(1, vertices, faces, [View(camera, image, "Camera.00")], options)
    request = parse_start_fit(message)      # on the backend's side; ValueError if malformed
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import CameraMatrices

# Every message type and the fields it must carry (more fields are allowed).
MESSAGE_FIELDS: dict[str, tuple[str, ...]] = {
    # backend -> client
    "hello": ("protocol", "backend_version", "python", "torch", "cupy", "device",
              "cuda_available", "gpu_name", "pid"),
    "progress": ("fit_id", "iteration", "iterations", "losses", "mean_iou", "view_iou",
                 "elapsed"),
    "vertices": ("fit_id", "iteration", "vertices", "faces"),
    "done": ("fit_id", "status", "vertices", "faces", "colors", "metrics", "message"),
    "error": ("fit_id", "message", "kind", "fatal"),
    "heartbeat": ("busy", "fit_id", "uptime"),
    "stage": ("fit_id", "stage", "done", "total"),
    "masks": ("fit_id", "names", "masks", "silhouettes"),
    "solve_progress": ("fit_id", "stage", "fraction", "message"),
    "cameras": ("fit_id", "status", "message", "model", "registered", "unregistered",
                "stage_seconds", "frame"),
    # client -> backend
    "start_fit": ("fit_id", "vertices", "faces", "views", "options"),
    "segment": ("fit_id", "views", "silhouettes"),
    "solve_cameras": ("fit_id", "images", "output", "ordering", "up", "known_distance"),
    "cancel": ("fit_id",),
    "shutdown": (),
}

# What an error message's "kind" says: "fit" (bad input, fix and retry), "busy", "internal",
# "protocol", "startup", "missing_dependency".
ERROR_KINDS = ("fit", "busy", "internal", "protocol", "startup", "missing_dependency")


@dataclass
class View:
    """One camera and its reference image, as a fit request carries it.

    camera: its `CameraMatrices` (image size included). image: (H, W, 4) float32 RGBA
    in [0, 1], row 0 at the top, linear, straight alpha; alpha is the silhouette.
    held_out: measured, never fitted.
    mask: (H, W) float32 in [0, 1] (1 = object) the user gave for this camera (a mask
    file), or None; used by the silhouettes stage, see `silhouettes`.
    """

    camera: CameraMatrices
    image: np.ndarray
    name: str = ""
    held_out: bool = False
    mask: np.ndarray | None = None


@dataclass
class StartFit:
    """A parsed start_fit request. vertices: (V, 3) float array or None (start from the
    silhouettes, faces None too); faces: (F, 3) int array or None; options: `FitOptions`
    fields as plain values."""

    fit_id: int
    vertices: np.ndarray | None
    faces: np.ndarray | None
    views: list[View]
    options: dict
    silhouettes: dict | None = None


@dataclass
class Segment:
    """A parsed segment request: find the views' silhouettes without fitting.
    silhouettes: `backend.segment.stage.SilhouetteRequest` fields as plain values."""

    fit_id: int
    views: list[View]
    silhouettes: dict


@dataclass
class SolveCameras:
    """A parsed solve_cameras request (`backend.sfm.solve_cameras` arguments).

    images: a folder of photos, or a list of photo files. output: the folder the backend
    writes the solved COLMAP text model into. ordering: "auto", "exhaustive" or
    "sequential". up: "auto", "ring", "camera", or the up direction (3,) float64 in the
    solved frame. known_distance: the cameras' median distance to the subject in scene
    units, or None (the subject at about unit radius).
    """

    fit_id: int
    images: str | list[str]
    output: str
    ordering: str
    up: str | np.ndarray
    known_distance: float | None


# -- client -> backend ---------------------------------------------------------------------


def start_fit(fit_id: int, vertices: np.ndarray | None, faces: np.ndarray | None,
              views: list[View], options: dict | None = None,
              silhouettes: dict | None = None) -> dict:
    """The request that starts a fit (arrays are sent from memory as they are).

    silhouettes: how the backend finds the silhouettes first (`silhouettes_settings`);
    None: the images' alpha as it is, no silhouettes stage."""
    message = {"type": "start_fit", "fit_id": fit_id, "vertices": vertices, "faces": faces,
               "views": [_view(v) for v in views], "options": dict(options or {})}
    if silhouettes is not None:
        message["silhouettes"] = dict(silhouettes)
    return message


def segment(fit_id: int, views: list[View], silhouettes: dict) -> dict:
    """Ask for the views' silhouettes only (answered by a masks message, or an error)."""
    return {"type": "segment", "fit_id": fit_id, "views": [_view(v) for v in views],
            "silhouettes": dict(silhouettes)}


def solve_cameras(fit_id: int, images, output: str, ordering: str = "auto", up="auto",
                  known_distance: float | None = None) -> dict:
    """Ask for the cameras of a folder (or list) of photos; answered by solve_progress
    messages, then a cameras message (or an error). See `SolveCameras` for the fields."""
    if not isinstance(up, str):
        up = [float(v) for v in up]
    return {"type": "solve_cameras", "fit_id": fit_id,
            "images": images if isinstance(images, str) else [str(p) for p in images],
            "output": str(output), "ordering": ordering, "up": up,
            "known_distance": None if known_distance is None else float(known_distance)}


def silhouettes_settings(mode: str = "auto", model: str | None = None, check: bool = True,
                         keep_flagged: bool = False, contact_sheet: str | None = None) -> dict:
    """The silhouettes field of start_fit and segment. mode: auto|alpha|masks|key|learned;
    model: ONNX file for learned; check: multi-view consistency check; keep_flagged: fit
    views the check flags; contact_sheet: image path the backend writes after the fit."""
    return {"mode": mode, "model": model, "check": bool(check),
            "keep_flagged": bool(keep_flagged), "contact_sheet": contact_sheet}


def _view(v: View) -> dict:
    view = {"name": v.name, "camera": v.camera.to_dict(), "image": v.image,
            "held_out": bool(v.held_out)}
    if v.mask is not None:
        view["mask"] = np.asarray(v.mask, dtype=np.float32)
    return view


def cancel(fit_id: int | None) -> dict:
    """Stop the fit ``fit_id`` (None: whichever runs)."""
    return {"type": "cancel", "fit_id": fit_id}


def shutdown() -> dict:
    return {"type": "shutdown"}


def parse_start_fit(message: dict) -> StartFit:
    """A start_fit message as plain data; ValueError saying what is wrong with it.

    Images may arrive as float (kept, as float32) or uint8 (divided by 255).
    """
    try:
        views = [_parse_view(i, v) for i, v in enumerate(message["views"])]
        options = dict(message["options"] or {})
        vertices = _optional_array(message["vertices"], "vertices")
        faces = _optional_array(message["faces"], "faces")
        silhouettes = message.get("silhouettes")
        if silhouettes is not None and not isinstance(silhouettes, dict):
            raise TypeError("silhouettes must be an object or absent")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed fit request: {exc!r}") from exc
    return StartFit(message["fit_id"], vertices, faces, views, options, silhouettes)


def parse_segment(message: dict) -> Segment:
    """A segment message as plain data; ValueError saying what is wrong with it."""
    try:
        views = [_parse_view(i, v) for i, v in enumerate(message["views"])]
        silhouettes = message["silhouettes"]
        if not isinstance(silhouettes, dict):
            raise TypeError("silhouettes must be an object")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed segment request: {exc!r}") from exc
    return Segment(message["fit_id"], views, silhouettes)


def parse_solve_cameras(message: dict) -> SolveCameras:
    """A solve_cameras message as plain data; ValueError saying what is wrong with it (the
    values themselves, e.g. an unknown ordering, are checked by `backend.sfm`)."""
    images, output, up = message["images"], message["output"], message["up"]
    distance = message["known_distance"]
    if not (isinstance(images, str) or (isinstance(images, list)
                                        and all(isinstance(p, str) for p in images))):
        raise ValueError("malformed solve_cameras request: images must be a folder or a list "
                         "of file paths")
    if not isinstance(output, str) or not output:
        raise ValueError("malformed solve_cameras request: output must name a folder")
    if not isinstance(message["ordering"], str):
        raise ValueError("malformed solve_cameras request: ordering must be a string")
    if not isinstance(up, str):
        if not (isinstance(up, list) and len(up) == 3
                and all(isinstance(v, (int, float)) for v in up)):
            raise ValueError("malformed solve_cameras request: up must be a string or 3 numbers")
        up = np.asarray(up, dtype=np.float64)
    if distance is not None and not isinstance(distance, (int, float)):
        raise ValueError("malformed solve_cameras request: known_distance must be a number "
                         "or null")
    return SolveCameras(message["fit_id"], images, output, message["ordering"], up,
                        None if distance is None else float(distance))


def _parse_view(index: int, view) -> View:
    if not isinstance(view, dict):
        raise ValueError(f"view {index} must be an object with camera and image")
    image = view.get("image")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"view {index} ({view.get('name', '')!r}) has no image array")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype.kind == "f":
        image = image.astype(np.float32, copy=False)
    else:
        raise ValueError(f"view {index}'s image has dtype {image.dtype}: send float32 in [0, 1] "
                         "or uint8")
    mask = view.get("mask")
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise ValueError(f"view {index}'s mask must be an (H, W) array")
        mask = mask.astype(np.float32) / 255.0 if mask.dtype == np.uint8 else (
            mask.astype(np.float32, copy=False))
    return View(camera=CameraMatrices.from_dict(view["camera"]), image=image,
                name=str(view.get("name", "")), held_out=bool(view.get("held_out", False)),
                mask=mask)


def _optional_array(value, name: str):
    if value is None or isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{name} must be an array or null, got {type(value).__name__}")


# -- backend -> client ---------------------------------------------------------------------


def progress(fit_id: int, p) -> dict:
    """A `backend.fit.fitting.Progress` as a progress message (its vertices go separately,
    see `vertices`)."""
    return {
        "type": "progress", "fit_id": fit_id, "iteration": int(p.iteration),
        "iterations": int(p.iterations),
        "losses": {str(k): float(v) for k, v in p.losses.items()},
        "mean_iou": float(p.mean_iou), "view_iou": [float(x) for x in p.view_iou],
        "elapsed": float(p.elapsed),
    }


def vertices(fit_id: int, iteration: int, vertices: np.ndarray,
             faces: np.ndarray | None) -> dict:
    """Streamed vertices (V, 3); faces (F, 3) only when the topology differs from the last
    one the client knows (at first: the faces it sent), else None. Copies both, since a
    fit keeps updating its own buffers in place."""
    return {"type": "vertices", "fit_id": fit_id, "iteration": int(iteration),
            "vertices": np.array(vertices, dtype=np.float32),
            "faces": None if faces is None else np.array(faces, dtype=np.int32)}


def newest_vertices(old: dict | None, new: dict) -> dict:
    """The vertices message to keep when ``new`` replaces ``old``, which was never read:
    ``new``, carrying ``old``'s faces when it has none and both belong to the same fit,
    so a topology change is never lost."""
    if (old is not None and new["faces"] is None and old["faces"] is not None
            and old["fit_id"] == new["fit_id"]):
        return {**new, "faces": old["faces"]}
    return new


def done(fit_id: int, r, silhouettes: dict | None = None) -> dict:
    """A `backend.fit.fitting.FitResult` as a done message; silhouettes: the silhouettes
    stage's report (`SegmentOutcome.report`: sources, flagged views and why, seconds) when
    the request had one."""
    message = {
        "type": "done", "fit_id": fit_id, "status": r.status, "message": r.message,
        "vertices": np.asarray(r.vertices, dtype=np.float32),
        "faces": np.asarray(r.faces, dtype=np.int32),
        "colors": None if r.colors is None else np.asarray(r.colors, dtype=np.float32),
        "topology_changed": bool(r.topology_changed),
        "metrics": {
            "fit_iou": dict(r.fit_iou),
            "heldout_iou": dict(r.heldout_iou),
            "mean_fit_iou": float(r.mean_fit_iou),
            "loss_history": list(r.loss_history),
            "timing": dict(r.timing),
            "iterations": int(r.iterations),
            "device": str(r.device),
        },
        # `ViewCorrection.to_dict` per refined camera (empty without refine_cameras)
        "camera_corrections": [c.to_dict() for c in r.camera_corrections],
    }
    if silhouettes is not None:
        message["silhouettes"] = dict(silhouettes)
    return message


def stage(fit_id: int, name: str, done_count: int, total: int) -> dict:
    """A stage before the fit's iterations (name "silhouettes"): done_count of total
    views handled."""
    return {"type": "stage", "fit_id": fit_id, "stage": name, "done": int(done_count),
            "total": int(total)}


def masks(fit_id: int, names: list[str], mask_arrays: list[np.ndarray],
          silhouettes: dict) -> dict:
    """The answer to segment: per view (H, W) float32 mask, and the silhouettes report
    (sources, flagged views with reasons, seconds; `SegmentOutcome.report`)."""
    return {"type": "masks", "fit_id": fit_id, "names": list(names),
            "masks": [np.asarray(m, dtype=np.float32) for m in mask_arrays],
            "silhouettes": dict(silhouettes)}


def solve_progress(fit_id: int, stage_name: str, fraction: float, text: str) -> dict:
    """How far a camera solve is: stage_name one of "features", "matching", "mapping";
    fraction of that stage in [0, 1]; text for the user."""
    return {"type": "solve_progress", "fit_id": fit_id, "stage": stage_name,
            "fraction": float(fraction), "message": str(text)}


def cameras_solved(fit_id: int, result, model: str) -> dict:
    """The answer to solve_cameras: a `backend.sfm.SolveResult` whose COLMAP text model was
    written to the folder ``model`` (image names relative to ``result.image_dir``)."""
    registered = [{"image": c.image, "name": c.name, "observations": int(c.observations)}
                  for c in result.cameras]
    return {"type": "cameras", "fit_id": fit_id, "status": "solved",
            "message": f"{len(registered)} of {len(registered) + len(result.unregistered)} "
                       "photos registered",
            "model": str(model), "image_dir": str(result.image_dir), "registered": registered,
            "unregistered": [{"image": u.image, "reason": u.reason} for u in result.unregistered],
            "stage_seconds": {k: float(v) for k, v in result.stage_seconds.items()},
            "frame": {k: v if isinstance(v, str) else float(v) for k, v in result.frame.items()}}


def cameras_cancelled(fit_id: int, cancelled) -> dict:
    """The answer to a cancelled solve_cameras (a `backend.sfm.SolveCancelled`): no model."""
    return {"type": "cameras", "fit_id": fit_id, "status": "cancelled", "message": str(cancelled),
            "model": None, "registered": [], "unregistered": [],
            "stage_seconds": {k: float(v) for k, v in cancelled.stage_seconds.items()},
            "frame": None}


def error(fit_id: int | None, text: str, kind: str, fatal: bool) -> dict:
    """kind: one of `ERROR_KINDS`. fatal: the backend exits after sending it."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"error kind must be one of {ERROR_KINDS}, got {kind!r}")
    return {"type": "error", "fit_id": fit_id, "message": text, "kind": kind, "fatal": fatal}


def heartbeat(busy: bool, fit_id: int | None, iteration: int, uptime: float) -> dict:
    return {"type": "heartbeat", "busy": busy, "fit_id": fit_id, "iteration": iteration,
            "uptime": uptime}


def hello_threads(hello: dict) -> tuple[int, str] | None:
    """(thread count, OpenMP wait policy) the backend chose, from its hello; None when
    the hello does not say (an older backend) or says it in another shape."""
    threads = hello.get("threads")
    if not isinstance(threads, dict):
        return None
    count, policy = threads.get("count"), threads.get("wait_policy")
    if type(count) is not int or not isinstance(policy, str):
        return None
    return count, policy
