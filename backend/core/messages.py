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
    # client -> backend
    "start_fit": ("fit_id", "vertices", "faces", "views", "options"),
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
    """

    camera: CameraMatrices
    image: np.ndarray
    name: str = ""
    held_out: bool = False


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


# -- client -> backend ---------------------------------------------------------------------


def start_fit(fit_id: int, vertices: np.ndarray | None, faces: np.ndarray | None,
              views: list[View], options: dict | None = None) -> dict:
    """The request that starts a fit (arrays are sent from memory as they are)."""
    return {"type": "start_fit", "fit_id": fit_id, "vertices": vertices, "faces": faces,
            "views": [{"name": v.name, "camera": v.camera.to_dict(), "image": v.image,
                       "held_out": bool(v.held_out)} for v in views],
            "options": dict(options or {})}


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
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed fit request: {exc!r}") from exc
    return StartFit(message["fit_id"], vertices, faces, views, options)


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
    return View(camera=CameraMatrices.from_dict(view["camera"]), image=image,
                name=str(view.get("name", "")), held_out=bool(view.get("held_out", False)))


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


def done(fit_id: int, r) -> dict:
    """A `backend.fit.fitting.FitResult` as a done message."""
    return {
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
    }


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
