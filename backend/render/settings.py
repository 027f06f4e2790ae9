"""The soft rasterizer's parameters: `RenderSettings` and its `Lighting`.

A module of its own so that the renderer and both rasterizers read one definition
(the rasterizers import it; nothing here imports them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Lighting:
    """SoftRas' simple lighting: ambient plus one directional light (world space).

    Colours are multiplied by ``ambient * ambient_color + directional *
    directional_color * max(0, n . direction)``, n the face's unit normal.
    """

    ambient: float = 0.5
    ambient_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    directional: float = 0.5
    directional_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    direction: tuple[float, float, float] = (0.0, 0.0, 1.0)


@dataclass(frozen=True)
class RenderSettings:
    """Soft rasterization parameters.

    sigma: edge softness in squared pixels (see `backend.render.renderer`).
    gamma: colour aggregation temperature on normalised depth (smaller = sharper z-test).
    background_depth: eps, the background's normalised depth in the colour softmax.
    near, far: view-depth range; a face with a vertex outside it is skipped.
    background_color: RGB of the background.
    double_sided: False skips faces whose front (counter-clockwise side) looks away.
    cutoff: a face is skipped at a pixel exactly when its D is below this.
    lighting: None for unlit colours.
    """

    sigma: float = 0.1
    gamma: float = 1e-4
    background_depth: float = 1e-3
    near: float = 0.1
    far: float = 100.0
    background_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    double_sided: bool = True
    cutoff: float = 1e-4
    lighting: Lighting | None = None

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")
        if not 0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far, got near={self.near}, far={self.far}")
        if not 0 < self.cutoff < 0.5:
            raise ValueError(f"cutoff must be in (0, 0.5), got {self.cutoff}")

    @property
    def cutoff_distance2(self) -> float:
        """The squared distance (pixels^2) beyond a triangle's edge where D falls to the
        cutoff: outside a face D = sigmoid(-d^2 / sigma), which equals the cutoff at
        d^2 = sigma * ln(1 / cutoff - 1). Pairs at or beyond it are skipped."""
        return self.sigma * math.log(1.0 / self.cutoff - 1.0)

    @property
    def cutoff_distance(self) -> float:
        """Pixels beyond a triangle's edge where D falls to the cutoff."""
        return math.sqrt(self.cutoff_distance2)
