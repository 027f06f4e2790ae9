"""What each iteration of the fit does: its resolution level, edge softness, learning
rate and topology change (`Schedule`), and which views it renders (`ViewSampler`).

Coarse to fine: the first ``coarse_fraction`` of the iterations render downsampled
images, the resolution doubling level by level up to the finest level: full size, or
less where the images are larger than ``max_render_side`` (a step then costs a
fraction of the time, and on the 800 px benchmark the held-out IoU, measured at full
size, came out no worse: docs/benchmarks.md, the large case); the coarse levels' target
alphas are max-pooled rather than averaged, so thin parts stay (`backend.fit.targets`); sigma falls
geometrically from ``sigma_start`` to ``sigma_end`` over the first
``sharpen_fraction``; the learning rate decays exponentially to ``lr_final`` times
its start. See `FitOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.options import FitOptions

# The coarsest level's longer image side, in pixels: smaller images show too little.
MIN_LEVEL_SIDE = 32
ODD_LEVEL_RATIO = 1.5  # `resolution_levels`


@dataclass(frozen=True)
class Step:
    """One iteration's settings.

    level: index into `Schedule.levels`; resolution: that level's image scale (0, 1];
    sigma: edge softness in squared pixels of the rendered image; lr_factor: the
    learning rates' multiplier (1 at the start); subdivide: split every face in four
    before this iteration; camera_ramp: the camera corrections' learning-rate ramp (0
    through the coarse levels, rising linearly to 1 over ``refine_ramp`` of the
    iterations; `backend.fit.camera_refine`).
    """

    iteration: int
    level: int
    resolution: float
    sigma: float
    lr_factor: float
    subdivide: bool
    camera_ramp: float = 0.0


# `start_lr_scale`: a start whose silhouettes miss this much (1 - mean IoU) or more gets
# the full learning rates; a closer one less, down to START_LR_MIN. The uniform Adam of
# large steps moves by the learning rate however small the gradient, so full-size first
# steps wreck a start that already fits: the 800 px table's visual hull (IoU 0.96 on its
# views) lost its flat top and broke its legs in 20 iterations (held-out IoU 0.930,
# below the hull's 0.937; at a third of the rate 0.979).
START_MISMATCH_FULL_LR = 0.15
START_LR_MIN = 1.0 / 3.0


def start_lr_scale(start_iou: float) -> float:
    """The learning rates' scale for a start whose hard IoU with the training
    silhouettes is ``start_iou`` (their mean): 1 for a rough start, down to START_LR_MIN
    for one that already covers them."""
    mismatch = 1.0 - float(start_iou)
    return float(np.clip(mismatch / START_MISMATCH_FULL_LR, START_LR_MIN, 1.0))


class Schedule:
    """The fit's plan, asked once per iteration: ``schedule.at(iteration)``."""

    def __init__(self, options: FitOptions, smallest_side: int, largest_side: int | None = None):
        """smallest_side, largest_side: the smallest and the largest training view's longer
        side, in pixels (largest_side None: all views are the same size)."""
        self.options = options
        self.levels = resolution_levels(options, smallest_side, largest_side or smallest_side)
        self.subdivide_at = sorted({int(round(f * options.iterations))
                                    for f in options.subdivide_at})

    def at(self, iteration: int) -> Step:
        """The settings of a 0-based iteration."""
        options = self.options
        level = _level_at(iteration, options, len(self.levels))
        decay = options.lr_final ** (iteration / max(options.iterations - 1, 1))
        return Step(iteration, level, self.levels[level], _sigma_at(iteration, options), decay,
                    iteration in self.subdivide_at, _camera_ramp_at(iteration, options))


def resolution_levels(options: FitOptions, smallest_side: int, largest_side: int) -> list[float]:
    """Image scales from coarse to the finest, halving: the finest is 1.0, or
    ``max_render_side / largest_side`` where that is smaller; the coarsest is
    ``resolution_start`` of the finest, but none puts the smallest view's longer side
    under MIN_LEVEL_SIDE px. That start is a level of its own only when it is at least
    ODD_LEVEL_RATIO times coarser than the last halving: a level 1.25x from the next
    only repeats it (the 320x240 table from the cube then ended with its top passing
    through itself). Sides in pixels."""
    finest = finest_scale(options, largest_side)
    start = max(options.resolution_start * finest, min(finest, MIN_LEVEL_SIDE / smallest_side))
    levels = [finest]
    if options.coarse_fraction > 0:
        while levels[0] / 2 >= start * 0.999:
            levels.insert(0, levels[0] / 2)
        if levels[0] >= start * ODD_LEVEL_RATIO * 0.999:
            levels.insert(0, start)
    return levels


def finest_scale(options: FitOptions, largest_side: int) -> float:
    """The finest level's image scale (0, 1]: 1.0 unless the largest view's longer side
    (pixels) exceeds ``options.max_render_side`` (0: no limit)."""
    if options.max_render_side and largest_side > options.max_render_side:
        return options.max_render_side / largest_side
    return 1.0


def _level_at(iteration: int, options: FitOptions, n_levels: int) -> int:
    """Index of the resolution level for a 0-based iteration."""
    if n_levels == 1:
        return 0
    coarse_iters = options.coarse_fraction * options.iterations
    if iteration >= coarse_iters:
        return n_levels - 1
    return min(int(iteration / coarse_iters * (n_levels - 1)), n_levels - 2)


def _camera_ramp_at(iteration: int, options: FitOptions) -> float:
    """0 until the coarse levels end, then rising linearly to 1 over ``refine_ramp``."""
    start = options.coarse_fraction * options.iterations
    span = max(options.refine_ramp * options.iterations, 1.0)
    return float(np.clip((iteration - start + 1) / span, 0.0, 1.0))


def _sigma_at(iteration: int, options: FitOptions) -> float:
    span = options.sharpen_fraction * options.iterations
    t = 1.0 if span <= 0 else min(iteration / span, 1.0)
    return options.sigma_start * (options.sigma_end / options.sigma_start) ** t


class ViewSampler:
    """Which training views each iteration renders: ``per_step`` at a time, going through
    random permutations of all of them (seeded, so a fit is repeatable)."""

    def __init__(self, train_idx: list[int], per_step: int, seed: int):
        self.train_idx = train_idx
        self.per_step = min(per_step, len(train_idx))
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []

    def next(self) -> list[int]:
        """The next iteration's view indices."""
        if len(self._order) < self.per_step:
            self._order += [self.train_idx[k] for k in self._rng.permutation(len(self.train_idx))]
        chosen, self._order = self._order[:self.per_step], self._order[self.per_step:]
        return chosen
