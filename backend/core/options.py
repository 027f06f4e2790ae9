"""What a fit can be told: `FitOptions`, and `FitError` for input it refuses.

Standard library and numpy only, so the Blender add-on imports the same
definitions (and their defaults) as the backend.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

DEVICES = ("auto", "cpu", "cuda")
INITS = ("hull", "sphere")
TOPOLOGIES = ("adapt", "keep")


class FitError(ValueError):
    """Bad input to `fit`; the message says what is wrong and how to fix it."""


@dataclass
class FitOptions:
    """Everything `fit` can be told; the defaults come from benchmarks/bench_fit.py.

    Schedule: the first ``coarse_fraction`` of the iterations render at reduced
    resolution, starting at ``resolution_start`` of the finest level (but no smaller
    than 32 px on the longer side: about 32-40 px for images up to 320 px, where a rough
    start finds the object's coarse shape best) and doubling up to the finest: full size, or
    ``max_render_side`` pixels on the longest side where the images are larger (0: no
    limit; hard IoU is still measured at full size); sigma (edge softness in squared
    pixels of the image being rendered) falls geometrically from ``sigma_start`` to
    ``sigma_end`` over the first ``sharpen_fraction`` of the iterations; keep
    ``sigma_end`` small, since soft edges fatten the silhouette and the fit would
    shrink the mesh to compensate (sigma_start 1.0 collapsed a hull start's thin parts
    to wires in the first 20 iterations; 0.3 keeps them, docs/benchmarks.md). The coarse
    levels' target alphas are max-pooled, so a part thinner than a coarse pixel stays
    opaque (`backend.fit.targets`). ``subdivide_at`` lists fractions of the iterations
    at which every face is split in four (skipped beyond ``max_faces``); none by
    default, so a fitted mesh keeps its topology (in Blender: a shape key on the
    user's mesh rather than a new object). The learning
    rate decays exponentially to ``lr_final`` times its start.

    Losses: ``silhouette_weight`` (1 - soft IoU), ``color_weight`` (L1 inside the
    target silhouettes, with ``fit_colors``), ``laplacian_weight`` (Laplacian of the
    vertex offsets, so the initial shape's own detail is kept), ``flatten_weight``,
    ``edge_weight`` (edges near the initial mean length), ``normal_weight`` (normal
    consistency), ``curvature_weight`` (the squared gradient of the mean curvature: zero
    on planes, spheres and cylinders, it flattens the waves and bumps the silhouettes
    cannot see, such as on a flat top; in inverse length^4 of the normalised frame, hence
    the small weight), ``unseen_weight`` (the surface's area in square pixels of the
    finest level, moved only through the vertices no fitting view sees near edge-on: a
    membrane that flattens waves and domes no silhouette can see, without pulling on the
    outlines; like the curvature term, only at the finest level); see
    `backend.fit.losses`.

    Initial mesh (when none is given): ``init`` "hull" carves the visual hull,
    "sphere" stretches an icosphere over the hull's bounding box; ``init_faces`` is
    the initial mesh's approximate face count (0: chosen from the image size).
    ``align_initial`` moves and scales a given mesh onto the silhouettes first (done
    anyway when the mesh's bounding box misses most of the silhouettes' one).

    Topology (`backend.fit.adaptive`): ``topology`` "adapt" remeshes every
    ``remesh_every`` iterations toward edges of ``edge_pixels`` pixels in the views at
    the current resolution level, with at most ``face_budget`` faces (0: sized from the
    silhouettes' pixel area, never above ``max_faces``); "keep" keeps the given faces
    (in Blender: a shape key on the user's mesh). With "adapt", ``untangle`` smooths the
    surface where it passes through itself, every ``remesh_every`` iterations and at the
    end (`backend.fit.remesh.untangle`; turn it off for a start whose parts cross on
    purpose; a fit that refines cameras is not untangled, see `backend.fit.loop`).
    ``large_steps`` optimises the shape through u = (I + ``smoothing`` L) v (Nicolet et
    al. 2021), moved by a uniform Adam at ``large_steps_lr``, instead of Adam
    on offsets at ``learning_rate`` held by the Laplacian term (``laplacian_weight`` then
    does nothing).

    Cameras (`backend.fit.camera_refine`): ``refine_cameras`` optimises a small rotation
    and shift of every fitting view's camera with the mesh (``refine_focal``: also one
    shared focal-length scale), by Adam steps of about ``camera_step_px`` pixels of the
    finest rendered level (a learning rate of that over the focal length in pixels),
    ramped in over ``refine_ramp`` of the iterations after the coarse levels, pulled
    toward zero by
    ``camera_weight``; a view's correction beyond ``refine_max_degrees`` or
    ``refine_max_shift`` (a fraction of its distance) is flagged and not applied. With
    ``refine_tangents`` (on), the cameras are first solved from the silhouettes alone,
    before the mesh can bend to explain their errors: their epipolar tangencies
    (`backend.fit.silhouette_calibration`); the visual hull is carved with the solved
    cameras and the fit refines them further. After the first-order fit, optionally,
    ``polish_steps`` Levenberg-Marquardt steps (about 3-5 s each for 24 views at 128 px
    on 2 CPU cores) move the mesh and the cameras together (`backend.fit.joint_polish`;
    0: none): each solves the Gauss-Newton system by at most ``polish_cg_iterations``
    conjugate-gradient products, damped from ``polish_damping``, the silhouettes
    rendered at ``polish_sigma`` (px^2) and the vertex moves held smooth by
    ``polish_smoothness`` (like ``laplacian_weight``).
    """

    iterations: int = 300  # the table from every start: 0.962-0.967 held-out IoU (200: 0.959-0.964)
    learning_rate: float = 0.03
    lr_final: float = 0.1
    views_per_step: int = 8
    resolution_start: float = 0.0625  # 32-63 px (0.25: 80 px at 320 px, table from UV sphere 0.931)
    coarse_fraction: float = 0.5
    max_render_side: int = 512
    sigma_start: float = 0.3
    sigma_end: float = 0.003
    sharpen_fraction: float = 0.9
    subdivide_at: tuple[float, ...] = ()
    max_faces: int = 20000
    silhouette_weight: float = 1.0
    color_weight: float = 1.0
    laplacian_weight: float = 100.0
    flatten_weight: float = 0.1
    edge_weight: float = 0.0
    normal_weight: float = 0.001
    curvature_weight: float = 1e-6
    unseen_weight: float = 2e-4  # per px^2: the 320 px table from the cube 0.966 -> 0.973
    fit_transform: bool = True
    fit_colors: bool = False
    lighting: bool = False
    color_learning_rate: float = 0.1
    device: str = "auto"
    seed: int = 0
    stream_every: int = 10
    init: str = "hull"
    init_faces: int = 0
    align_initial: bool = False
    topology: str = "adapt"
    remesh_every: int = 5
    edge_pixels: float = 2.0
    face_budget: int = 0
    untangle: bool = True
    large_steps: bool = True
    smoothing: float = 2.0
    large_steps_lr: float = 0.3
    refine_cameras: bool = False
    refine_focal: bool = False
    camera_step_px: float = 0.9  # 0.005 radians at the 128 px benchmarks' focal length
    camera_weight: float = 0.1
    refine_ramp: float = 0.1
    refine_max_degrees: float = 5.0
    refine_max_shift: float = 0.1
    refine_tangents: bool = True
    polish_steps: int = 0  # after the tangency solve the polish lowers held-out IoU
    polish_sigma: float = 0.05
    polish_smoothness: float = 100.0
    polish_damping: float = 0.1
    polish_cg_iterations: int = 20

    def __post_init__(self):
        self.subdivide_at = tuple(float(x) for x in self.subdivide_at)
        checks = [
            (self.iterations >= 0, "iterations must be >= 0"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 < self.lr_final <= 1, "lr_final (a fraction of learning_rate) must be in (0, 1]"),
            (self.color_learning_rate > 0, "color_learning_rate must be positive"),
            (self.views_per_step >= 1, "views_per_step must be >= 1"),
            (0 < self.resolution_start <= 1, "resolution_start must be in (0, 1]"),
            (0 <= self.coarse_fraction <= 1, "coarse_fraction must be in [0, 1]"),
            (self.max_render_side == 0 or self.max_render_side >= 64,
             "max_render_side must be 0 (full size) or at least 64 (pixels)"),
            (0 <= self.sharpen_fraction <= 1, "sharpen_fraction must be in [0, 1]"),
            (self.sigma_start > 0 and self.sigma_end > 0, "sigma_start and sigma_end must be > 0"),
            (all(0 < x < 1 for x in self.subdivide_at), "subdivide_at fractions must be in (0, 1)"),
            (self.max_faces >= 4, "max_faces must be >= 4"),
            (self.stream_every >= 1, "stream_every must be >= 1"),
            (self.init in INITS, f"init must be one of {INITS}"),
            (self.topology in TOPOLOGIES, f"topology must be one of {TOPOLOGIES}"),
            (self.remesh_every >= 1, "remesh_every must be >= 1"),
            (math.isfinite(self.edge_pixels) and self.edge_pixels >= 0.5,
             "edge_pixels must be at least 0.5 (pixels)"),
            (self.face_budget == 0 or self.face_budget >= 100,
             "face_budget must be 0 (from the images) or at least 100"),
            (math.isfinite(self.smoothing) and self.smoothing > 0, "smoothing must be > 0"),
            (self.large_steps_lr > 0, "large_steps_lr must be positive"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.camera_step_px > 0, "camera_step_px must be positive"),
            (0 <= self.refine_ramp <= 1, "refine_ramp must be in [0, 1]"),
            (self.refine_max_degrees > 0 and self.refine_max_shift > 0,
             "refine_max_degrees and refine_max_shift must be positive"),
            (self.polish_steps >= 0 and self.polish_cg_iterations >= 1,
             "polish_steps must be >= 0 and polish_cg_iterations >= 1"),
            (self.polish_sigma > 0 and self.polish_damping > 0,
             "polish_sigma and polish_damping must be positive"),
            (self.init_faces == 0 or self.init_faces >= 100,
             "init_faces must be 0 (automatic) or at least 100"),
        ]
        for name in ("silhouette_weight", "color_weight", "laplacian_weight", "flatten_weight",
                     "edge_weight", "normal_weight", "curvature_weight", "unseen_weight",
                     "camera_weight",
                     "polish_smoothness"):
            value = getattr(self, name)
            checks.append((math.isfinite(value) and value >= 0, f"{name} must be >= 0"))
        for ok, message in checks:
            if not ok:
                raise FitError(f"invalid fit option: {message}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["subdivide_at"] = list(self.subdivide_at)
        return d

    @staticmethod
    def from_dict(d: dict) -> FitOptions:
        """Options from plain data; unknown keys raise FitError (a ValueError)."""
        known = {f.name: f for f in dataclasses.fields(FitOptions)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise FitError(f"unknown fit options {unknown}; known options: {sorted(known)}")
        kwargs = {}
        for key, value in d.items():
            default = known[key].default
            try:
                if isinstance(default, bool):
                    if not isinstance(value, bool | np.bool_):
                        raise TypeError
                    kwargs[key] = bool(value)
                elif isinstance(default, int):
                    if isinstance(value, bool) or float(value) != int(value):
                        raise TypeError
                    kwargs[key] = int(value)
                elif isinstance(default, float):
                    kwargs[key] = float(value)
                elif isinstance(default, tuple):
                    kwargs[key] = tuple(float(x) for x in value)
                else:
                    kwargs[key] = str(value)
            except (TypeError, ValueError):
                raise FitError(
                    f"fit option {key!r} must be like {default!r}, got {value!r}"
                ) from None
        return FitOptions(**kwargs)
