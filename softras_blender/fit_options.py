"""The panel's few settings -> the backend's `FitOptions` fields.

Plain Python (no bpy, no torch). The sharpness presets and the smoothness scale the
backend's own defaults, imported from the torch-free backend/core/options.py, so they are
never restated here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .backend.core.options import DEVICES, FitOptions

DEFAULT_RESOLUTION = 256  # longest image side the fit works at, pixels
DEFAULT_SHARPNESS = "MEDIUM"

# The backend's devices (`backend.core.options.DEVICES`) as Blender enum items
# (identifier, label, description); identifiers are the device names in upper case.
DEVICE_LABELS = {
    "auto": ("Auto", "The GPU (CUDA) when the backend finds one, else the CPU"),
    "cpu": ("CPU", "Fit on the CPU (pure PyTorch)"),
    "cuda": ("CUDA", "Fit on an NVIDIA GPU with the CUDA kernels; fails if there is none"),
}
DEVICE_ITEMS = tuple((device.upper(), *DEVICE_LABELS[device]) for device in DEVICES)

# Panel starts without a mesh -> the backend's initial mesh ("init" option).
START_SHAPES = {"HULL": "hull", "SPHERE": "sphere"}

# The regulariser weights that "smoothness" scales.
SMOOTHNESS_WEIGHTS = ("laplacian_weight", "flatten_weight", "normal_weight",
                      "curvature_weight", "unseen_weight")


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


def backend_defaults() -> dict:
    """The backend's `FitOptions` defaults, by field name."""
    return dataclasses.asdict(FitOptions())


def options_from_settings(settings: dict, device: str) -> dict:
    """FitOptions fields for the panel's settings.

    settings: {"iterations", "sharpness", "fit_colors", "smoothness", "start", "align_mesh",
    "keep_topology", "refine_cameras"}
    as on ``scene.softras`` ("start" is its mesh_source; the resolution is applied to
    the images before sending, see `fit_size`); device: one of `DEVICES` in any case
    ("AUTO", "cpu", ...). Raises ValueError for values the backend would refuse.
    """
    if device.lower() not in DEVICES:
        raise ValueError(f"device must be one of {[item[0] for item in DEVICE_ITEMS]}, "
                         f"got {device!r}")
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
    start = settings.get("start", "ACTIVE")
    if start in START_SHAPES:
        options["init"] = START_SHAPES[start]
    elif settings.get("align_mesh"):
        options["align_initial"] = True
    if start not in START_SHAPES and settings.get("keep_topology"):
        options["topology"] = "keep"  # a shape key on the user's mesh, not a new object
    if settings.get("refine_cameras"):
        options["refine_cameras"] = True
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
