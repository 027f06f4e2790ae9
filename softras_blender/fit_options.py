"""The panel's few settings -> the backend's `backend.fitting.FitOptions` fields.

Plain Python (no bpy, no torch). The sharpness presets and the smoothness scale the
backend's own defaults, which Blender cannot import (backend.fitting needs torch):
`backend_defaults` reads them from the source of the add-on's bundled
backend/fitting.py instead, so they are never restated here.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_RESOLUTION = 256  # longest image side the fit works at, pixels
DEFAULT_SHARPNESS = "MEDIUM"
DEVICES = ("AUTO", "CPU", "CUDA")
FITTING_SOURCE = Path(__file__).resolve().parent / "backend" / "fitting.py"

# The regulariser weights that "smoothness" scales.
SMOOTHNESS_WEIGHTS = ("laplacian_weight", "flatten_weight", "normal_weight")


@dataclass(frozen=True)
class SharpnessPreset:
    """Factors on the backend's edge-softness schedule (sigma, squared pixels)."""

    label: str
    description: str
    start_factor: float
    end_factor: float


SHARPNESS_PRESETS = {
    "SOFT": SharpnessPreset("Soft", "Softer edges throughout: robust for rough starts and "
                            "noisy silhouettes, less detail", 2.0, 10.0),
    "MEDIUM": SharpnessPreset("Medium", "The backend's default schedule", 1.0, 1.0),
    "SHARP": SharpnessPreset("Sharp", "Crisper edges: more detail, needs a start close to "
                             "the target", 0.5, 0.3),
}


@functools.cache
def backend_defaults(source: Path = FITTING_SOURCE) -> dict:
    """The literal defaults of ``FitOptions`` in backend/fitting.py, by field name."""
    try:
        tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read the backend's fit options from {source}: {exc}; "
                         "reinstall the add-on") from exc
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FitOptions"]
    if not classes:
        raise ValueError(f"{source} defines no FitOptions: the add-on's backend is incomplete")
    defaults = {}
    for statement in classes[0].body:
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and statement.value is not None):
            try:
                defaults[statement.target.id] = ast.literal_eval(statement.value)
            except ValueError:
                continue  # not a literal (a default factory): not needed here
    needed = ("iterations", "sigma_start", "sigma_end", *SMOOTHNESS_WEIGHTS)
    missing = [k for k in needed if k not in defaults]
    if missing:
        raise ValueError(f"FitOptions in {source} has no literal default for {missing}")
    return defaults


def options_from_settings(settings: dict, device: str) -> dict:
    """FitOptions fields for the panel's settings.

    settings: {"iterations", "resolution", "sharpness", "fit_colors", "smoothness"} as
    on ``scene.softras`` (the resolution is applied to the images before sending, see
    `fit_size`); device: "AUTO" | "CPU" | "CUDA". Raises ValueError for values the
    backend would refuse.
    """
    device = device.upper()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    sharpness = settings["sharpness"]
    if sharpness not in SHARPNESS_PRESETS:
        raise ValueError(f"sharpness must be one of {sorted(SHARPNESS_PRESETS)}, "
                         f"got {sharpness!r}")
    iterations = int(settings["iterations"])
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    smoothness = float(settings["smoothness"])
    if not smoothness >= 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    preset = SHARPNESS_PRESETS[sharpness]
    options = {
        "iterations": iterations,
        "fit_colors": bool(settings["fit_colors"]),
        "device": device.lower(),
        # Stream about 30 meshes per fit, but not more often than every 5 steps.
        "stream_every": max(5, iterations // 30),
    }
    defaults = backend_defaults()
    if sharpness != "MEDIUM":
        options["sigma_start"] = defaults["sigma_start"] * preset.start_factor
        options["sigma_end"] = defaults["sigma_end"] * preset.end_factor
    if smoothness != 1.0:
        options.update({k: defaults[k] * smoothness for k in SMOOTHNESS_WEIGHTS})
    return options


def fit_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The (width, height) the fit works at: the render size scaled so its longest side
    is at most ``resolution`` (0: unchanged), aspect kept, at least 1 pixel."""
    if resolution < 0:
        raise ValueError(f"resolution must be >= 0, got {resolution}")
    longest = max(width, height)
    if resolution == 0 or longest <= resolution:
        return width, height
    scale = resolution / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def scaled_camera(camera, width: int, height: int):
    """The same camera rendering ``width`` x ``height`` pixels (a `CameraMatrices`).

    Pixel coordinates scale with the image (u' = u * width / W), so the intrinsics
    are multiplied by diag(width / W, height / H, 1); the pose is unchanged.
    """
    if (width, height) == (camera.width, camera.height):
        return camera
    k = np.diag([width / camera.width, height / camera.height, 1.0]) @ camera.intrinsics
    return type(camera)(k, camera.world_to_camera, int(width), int(height),
                        camera.orthographic)
