"""The panel's few settings -> the backend's `backend.fitting.FitOptions` fields.

Plain Python (no bpy, no torch): Blender cannot import backend.fitting (it needs
torch), so the handful of defaults this mapping builds on are restated here and
tests/test_addon_units.py checks them against FitOptions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ITERATIONS = 300
DEFAULT_RESOLUTION = 256  # longest image side the fit works at, pixels
DEFAULT_SHARPNESS = "MEDIUM"
DEVICES = ("AUTO", "CPU", "CUDA")

# FitOptions' regulariser weights at smoothness 1 (its defaults).
SMOOTHNESS_WEIGHTS = {"laplacian_weight": 0.5, "flatten_weight": 0.001, "normal_weight": 0.01}


@dataclass(frozen=True)
class SharpnessPreset:
    """Edge softness (squared pixels) at the start and the end of the fit; None keeps
    the backend's own schedule."""

    label: str
    description: str
    sigma_start: float | None
    sigma_end: float | None


SHARPNESS_PRESETS = {
    "SOFT": SharpnessPreset("Soft", "Soft edges throughout: robust for rough starts and "
                            "noisy silhouettes, less detail", 2.0, 0.3),
    "MEDIUM": SharpnessPreset("Medium", "The backend's default schedule", None, None),
    "SHARP": SharpnessPreset("Sharp", "Ends with crisp edges: more detail, needs a start "
                             "close to the target", 0.5, 0.02),
}


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
    if preset.sigma_start is not None:
        options.update(sigma_start=preset.sigma_start, sigma_end=preset.sigma_end)
    if smoothness != 1.0:
        options.update({k: v * smoothness for k, v in SMOOTHNESS_WEIGHTS.items()})
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
