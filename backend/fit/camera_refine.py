"""Camera refinement during the fit: small per-view pose corrections (and optionally one
shared focal-length scale) optimised jointly with the mesh through the same renderer.

Each training view i gets a rigid correction of the world (the fit's normalised frame)
before its camera: ``world_to_camera'_i = world_to_camera_i @ D_i`` with

    D_i x = R(w_i) (x - C_i) + C_i + t_i,

a rotation by the axis-angle ``w_i`` (radians) about the camera's centre ``C_i`` and a
shift ``t_i``; the corrected camera looks along a direction turned by |w_i| from its
centre moved to ``C_i - R(w_i)^T t_i`` (so |t_i| is how far it moved). A shared focal
scale multiplies fx and fy by exp(f).

The gauge. Moving every camera and the mesh by one similarity (rotation, translation,
scale about the frame's origin) changes no image, so those 7 directions of the
corrections are not determined by the images: left free, the corrections and the mesh's
global transform drift along them together and the mesh leaves the place the given
cameras put it. We remove them: the corrections the renderer sees are the raw parameters
projected onto the complement of the 7 linearised similarity modes (exact to first
order; the corrections are small), so the cameras keep their given mean pose and scale
and the mesh stays where the images put it. Freezing the mesh's global transform instead
would not do: a mesh fitted from a rough start needs it. The dilation mode is a gauge
only for perspective cameras and is left in for orthographic ones.

The corrections have their own Adam optimiser (they survive the mesh's topology
changes, which rebuild the mesh's), a learning rate ramped in from zero after the
coarse levels (`backend.fit.schedule.Step.camera_ramp`) and a quadratic regulariser
toward zero. After the fit, `CameraRefinement.report` lists each view's correction and
flags one past ``refine_max_degrees`` or ``refine_max_shift``: the add-on does not
apply a flagged correction.

Before the loop, with ``refine_tangents`` (on), `backend.fit.silhouette_calibration`
solves the cameras from the silhouettes alone (their epipolar tangencies), so the fit
starts from cameras the mesh has had no chance to bend around; the fit keeps the views
the solve pinned (``fixed``) and refines the others, and `report` counts both. After
the loop, `backend.fit.joint_polish` (``polish_steps``, off by default) can take a few
Levenberg-Marquardt steps on the mesh and the corrections together, at the finest
level with the topology fixed.

Which frame: the gauge projection fixes the corrections' mean in their own metric,
through which the directions the silhouettes barely see (a turn and the sideways move
that keeps the object in place; a roll on a ring rig) still shift the reconstruction by
up to half a pixel. After the fit, `CameraRefinement.keep_reconstruction` moves the
cameras and the mesh together by the similarity that puts the mesh where the cameras as
given put it (`backend.core.similarity`; docs/design.md, "Which frame refined cameras
keep").

What it reaches (docs/benchmarks.md, "Which frame refined cameras keep"): a 1.5 degree /
2% miscalibration of 24 Cycles views at 128 px ends within 0.0016-0.0030 held-out IoU
of exact cameras (three seeds; 0.0010 at 320x240). A focal error common to all views is
nearly a scale of the scene, hence nearly a gauge direction: the shared focal scale is
for views that disagree, and does not recover a common error from the silhouettes of a
compact object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..core.camera import CameraMatrices, camera_centres
from ..core.options import FitError, FitOptions
from ..core.similarity import keep_reconstruction, reconstruction_drift
from ..render.renderer import Cameras, project_points
from .inputs import Prepared
from .schedule import finest_scale
from .targets import Frame, ViewGroup

# Each view has 6 correction parameters and 7 of all of them are the gauge (a
# similarity): with fewer views almost nothing would be left to refine.
MIN_REFINED_VIEWS = 3


@dataclass
class ViewCorrection:
    """One view's refined-camera correction, in the scene's (world) units.

    rotation_deg: how far the camera turned; shift: how far its centre moved (scene
    units) and shift_fraction: that over its distance to the object's centre;
    reprojection_px: mean image displacement of the fitted mesh's vertices at full
    resolution; world_correction: (4, 4) rigid matrix M with
    ``matrix_world' = M @ matrix_world`` (Blender camera); focal_scale: the shared
    multiplier of the focal length (1 when not refined); flagged: the correction ran
    past the limits (reason says which) and should not be used.
    """

    name: str
    rotation_deg: float
    shift: float
    shift_fraction: float
    reprojection_px: float
    world_correction: np.ndarray
    focal_scale: float
    flagged: bool
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "rotation_deg": self.rotation_deg, "shift": self.shift,
                "shift_fraction": self.shift_fraction, "reprojection_px": self.reprojection_px,
                "world_correction": self.world_correction.tolist(),
                "focal_scale": self.focal_scale, "flagged": self.flagged, "reason": self.reason}


def skew(w: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N, 3, 3) cross-product matrices, [w]x v = w x v."""
    zero = torch.zeros_like(w[:, 0])
    return torch.stack([
        torch.stack([zero, -w[:, 2], w[:, 1]], dim=1),
        torch.stack([w[:, 2], zero, -w[:, 0]], dim=1),
        torch.stack([-w[:, 1], w[:, 0], zero], dim=1),
    ], dim=1)


def correction_matrices(rotation: torch.Tensor, shift: torch.Tensor,
                        centers: torch.Tensor) -> torch.Tensor:
    """The corrections D (N, 4, 4): x -> R(w) (x - C) + C + t, differentiable.

    rotation: (N, 3) axis-angle w (radians); shift: (N, 3) t; centers: (N, 3) C; all
    one float dtype, normalised frame.
    """
    rot = torch.linalg.matrix_exp(skew(rotation))
    trans = centers - torch.einsum("nij,nj->ni", rot, centers) + shift
    out = torch.zeros(len(rotation), 4, 4, dtype=rotation.dtype, device=rotation.device)
    out[:, :3, :3] = rot
    out[:, :3, 3] = trans
    out[:, 3, 3] = 1.0
    return out


def corrected_cameras(cameras: Cameras, corrections: torch.Tensor,
                      log_focal: torch.Tensor) -> Cameras:
    """``cameras`` (B of them) seen through corrections (B, 4, 4) and a shared focal scale
    exp(log_focal) (a (1,) tensor) on fx, fy and the skew; differentiable in both."""
    dtype = corrections.dtype
    scale = torch.exp(log_focal).reshape(())
    one = torch.ones((), dtype=dtype, device=corrections.device)
    row = torch.stack([scale, scale, one])
    factor = torch.stack([row, row, torch.ones_like(row)])  # (3, 3): K[:2, :2] scaled
    return Cameras(cameras.intrinsics.to(dtype) * factor,
                   cameras.world_to_camera.to(dtype) @ corrections,
                   cameras.orthographic, cameras.width, cameras.height, list(cameras.names))


def gauge_basis(centers: np.ndarray, distances: np.ndarray, perspective: bool) -> np.ndarray:
    """Orthonormal basis (6N, 7 or 6) of the similarity modes in the raw parameters.

    Raw parameters per view: [w (3), t / d (3)], d the view's distance to the frame's
    origin. To first order a world motion x -> x + a x x + b + s x is, per view,
    w = a, t = a x C + b + s C. centers: (N, 3) float64; distances: (N,).
    """
    n = len(centers)
    modes = []
    for k in range(3):
        axis = np.eye(3)[k]
        mode = np.zeros((n, 6))
        mode[:, :3] = axis
        mode[:, 3:] = np.cross(axis, centers) / distances[:, None]
        modes.append(mode)
        mode = np.zeros((n, 6))
        mode[:, 3:] = axis / distances[:, None]
        modes.append(mode)
    if perspective:
        mode = np.zeros((n, 6))
        mode[:, 3:] = centers / distances[:, None]
        modes.append(mode)
    q, _ = np.linalg.qr(np.stack([m.reshape(-1) for m in modes], axis=1))
    return q


class CameraRefinement:
    """The corrections of the training views' cameras and their optimiser."""

    def __init__(self, cameras: Sequence[CameraMatrices], views: Sequence[int],
                 names: Sequence[str], options: FitOptions, device, dtype=torch.float32,
                 base: np.ndarray | None = None, fixed: Collection[int] = ()):
        """cameras: the training views' full-resolution cameras in the normalised frame,
        views: their view indices, names: their names (same order). base: (N, 4, 4)
        corrections already applied to ``cameras`` before the fit (the tangency solve,
        `backend.fit.silhouette_calibration`), reported as part of each view's
        correction; None: none. fixed: view indices whose cameras the fit keeps (the
        ones the tangency solve pinned; they move only with the gauge)."""
        if len(cameras) < MIN_REFINED_VIEWS:
            raise FitError(f"refine_cameras needs at least {MIN_REFINED_VIEWS} fitting views "
                           f"with usable silhouettes, got {len(cameras)}: add views or turn "
                           "camera refinement off")
        self.options, self.names = options, list(names)
        self.row = {int(i): r for r, i in enumerate(views)}
        self.fixed = [self.row[int(i)] for i in fixed]
        self.base = np.tile(np.eye(4), (len(cameras), 1, 1)) if base is None else base
        # the cameras as the user gave them, which the report measures corrections from
        self.given = [dataclasses.replace(c, world_to_camera=c.world_to_camera @ np.linalg.inv(b))
                      for c, b in zip(cameras, self.base, strict=True)]
        pose = np.stack([c.world_to_camera for c in cameras])
        centers = camera_centres(pose)  # a solve: the normalised frame's rotations are scaled
        distances = np.linalg.norm(centers, axis=1)
        if np.any(distances < 1e-6):
            raise FitError("a camera sits at the object's centre: its pose cannot be refined")
        perspective = not any(c.orthographic for c in cameras)
        # Adam moves each parameter by about the learning rate a step, and a parameter
        # (radians, or a fraction of the distance) moves the image by the focal length
        # (pixels of the finest rendered level) times it: a rate in radians would take
        # 6x larger steps in the pixels of an 800 px view than of a 128 px one. For an
        # orthographic view, pixels per unit times the depth of the object's centre.
        depth = np.where([c.orthographic for c in cameras], np.abs(pose[:, 2, 3]), 1.0)
        focal = np.mean([abs(c.intrinsics[0, 0]) for c in cameras] * depth)
        largest = max(max(c.width, c.height) for c in cameras)
        self.learning_rate = options.camera_step_px / (focal * finest_scale(options, largest))
        as_tensor = lambda a: torch.tensor(a, dtype=dtype, device=device)  # noqa: E731
        self.centers, self.distances = as_tensor(centers), as_tensor(distances)
        self.gauge = as_tensor(gauge_basis(centers, distances, perspective))
        self.raw = torch.zeros(len(cameras), 6, dtype=dtype, device=device, requires_grad=True)
        # after the fit, the similarity `keep_reconstruction` carries the cameras by
        self.carried = torch.eye(4, dtype=dtype, device=device).repeat(len(cameras), 1, 1)
        self.log_focal = torch.zeros(1, dtype=dtype, device=device,
                                     requires_grad=options.refine_focal)
        params = [self.raw] + ([self.log_focal] if options.refine_focal else [])
        self.optimizer = torch.optim.Adam(params, lr=0.0, betas=(0.9, 0.99))

    def corrections(self, raw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rotation (N, 3) radians, shift (N, 3) normalised units), gauge removed, of the
        raw parameters ``raw`` (N, 6) (default: the optimised ones)."""
        flat = self.project((self.raw if raw is None else raw).reshape(-1))
        raw = flat.reshape(-1, 6)
        return raw[:, :3], raw[:, 3:] * self.distances[:, None]

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """(6N,) raw parameters with their gauge (similarity) part removed."""
        return flat - self.gauge @ (self.gauge.T @ flat)

    def matrices(self, raw: torch.Tensor | None = None) -> torch.Tensor:
        """The corrections D (N, 4, 4) of every refined view, differentiable, of the raw
        parameters ``raw`` (N, 6) (default: the optimised ones)."""
        rotation, shift = self.corrections(raw)
        return correction_matrices(rotation, shift, self.centers) @ self.carried

    def apply(self, cameras: Cameras, views: Sequence[int],
              raw: torch.Tensor | None = None) -> Cameras:
        """A batch's cameras (of views ``views``, view indices) corrected, differentiable;
        ``raw``: the raw parameters (N, 6) to use instead of the optimised ones."""
        rows = torch.as_tensor([self.row[int(i)] for i in views], dtype=torch.long,
                               device=self.raw.device)
        return corrected_cameras(cameras, self.matrices(raw)[rows], self.log_focal)

    def regulariser(self) -> torch.Tensor:
        """Mean over views of |w|^2 + |t / d|^2 (radians^2), plus the focal log-scale^2."""
        rotation, shift = self.corrections()
        per_view = (rotation ** 2).sum(1) + ((shift / self.distances[:, None]) ** 2).sum(1)
        return per_view.mean() + self.log_focal.pow(2).sum()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, lr_factor: float, ramp: float, views: Sequence[int]) -> None:
        """One Adam step at ``self.learning_rate * lr_factor * ramp`` (no step at 0) of
        the corrections of ``views`` (view indices: the ones this iteration rendered)
        and the focal scale.

        Lazy: the other views' corrections and Adam moments stay as they are. Adam would
        otherwise keep moving a view on its momentum through the iterations that do not
        render it (with 100 views and 8 a step, about 11 in 12), drifting its camera
        pixels away from where its silhouette put it.
        """
        lr = self.learning_rate * lr_factor * ramp
        if lr <= 0:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        idle = torch.ones(len(self.raw), dtype=torch.bool, device=self.raw.device)
        idle[[self.row[int(i)] for i in views if int(i) in self.row]] = False
        idle[self.fixed] = True
        state = self.optimizer.state.get(self.raw, {})
        kept = {key: state[key][idle].clone() for key in ("exp_avg", "exp_avg_sq")
                if key in state}
        kept_raw = self.raw.detach()[idle].clone()
        self.optimizer.step()
        with torch.no_grad():
            self.raw[idle] = kept_raw
            state = self.optimizer.state[self.raw]
            for key in ("exp_avg", "exp_avg_sq"):
                state[key][idle] = kept[key] if key in kept else 0.0

    def params(self) -> list[torch.Tensor]:
        return [self.raw, self.log_focal]

    def corrected(self, group: ViewGroup) -> ViewGroup:
        """``group`` with its refined views' cameras corrected (detached), for evaluation."""
        rows = [r for r, i in enumerate(group.indices) if i in self.row]
        if not rows:
            return group
        with torch.no_grad():
            fixed = self.apply(group.cameras.select(rows), [group.indices[r] for r in rows])
            intrinsics = group.cameras.intrinsics.clone()
            pose = group.cameras.world_to_camera.clone()
            intrinsics[rows] = fixed.intrinsics.to(intrinsics.dtype)
            pose[rows] = fixed.world_to_camera.to(pose.dtype)
        cams = group.cameras
        return dataclasses.replace(group, cameras=Cameras(
            intrinsics, pose, cams.orthographic, cams.width, cams.height, list(cams.names)))

    def keep_reconstruction(self, vertices: torch.Tensor) -> tuple[torch.Tensor, str]:
        """After the fit: move the corrected cameras and the fitted mesh ``vertices`` (V, 3,
        normalised frame) together by the one similarity no image shows, the one that puts
        the mesh where the cameras as given put what the corrected ones see
        (`backend.core.similarity.reconstruction_drift`). The gauge projection keeps the
        corrections' mean in their own metric, through which the directions the images
        barely see (per-view turns and rolls) still shift, turn and scale the
        reconstruction by up to half a pixel. Returns the moved vertices (V, 3) and what
        the report says of the move."""
        with torch.no_grad():
            total = (torch.as_tensor(self.base, dtype=self.raw.dtype, device=self.raw.device)
                     @ self.matrices()).double().cpu().numpy()
            focal = float(torch.exp(self.log_focal))
        corrected = [dataclasses.replace(g, intrinsics=_focal_scaled(g.intrinsics, focal),
                                         world_to_camera=g.world_to_camera @ t)
                     for g, t in zip(self.given, total, strict=True)]
        points = vertices.detach().double().cpu().numpy()
        sample = points[:: max(1, len(points) // 2000)]
        drift = reconstruction_drift(corrected, self.given, sample)
        carried = np.stack([np.linalg.inv(c.world_to_camera)
                            @ drift.camera_pose(c.world_to_camera) for c in corrected])
        with torch.no_grad():
            self.carried = self.carried @ torch.as_tensor(carried, dtype=self.carried.dtype,
                                                          device=self.carried.device)
        moved = torch.as_tensor(drift.apply(points), dtype=vertices.dtype, device=vertices.device)
        turn = np.degrees(np.linalg.norm(Rotation.from_matrix(drift.rotation).as_rotvec()))
        size = float(np.linalg.norm(np.ptp(points, axis=0)))
        shift = np.linalg.norm(drift.apply(points.mean(axis=0)) - points.mean(axis=0)) / size
        return moved, (f"the refined cameras and the mesh moved together by {turn:.2f} degrees, "
                       f"{100 * (drift.scale - 1):+.2f}% in scale and {100 * shift:.2f}% of "
                       "the mesh's size (a motion no image shows) so that the mesh sits where "
                       "the cameras as given put it")

    def report(self, vertices: torch.Tensor, to_world: np.ndarray) -> list[ViewCorrection]:
        """Each refined view's correction from its camera as given (the tangency solve's
        and the fit's together), in input order of the training views.

        vertices: (V, 3) the fitted mesh, normalised frame; to_world: (4, 4) the frame's
        normalised -> world matrix (`Frame.to_world_matrix`).
        """
        with torch.no_grad():
            total = torch.as_tensor(self.base, dtype=self.raw.dtype,
                                    device=self.raw.device) @ self.matrices()
            moved = reprojection_px(vertices, self.given, total, self.log_focal)
            focal = float(torch.exp(self.log_focal))
        total = total.double().cpu().numpy()
        scale = float(np.cbrt(abs(np.linalg.det(to_world[:3, :3]))))
        out = []
        for r, name in enumerate(self.names):
            degrees, shift = _rotation_and_shift(total[r], self.centers[r].double().cpu().numpy())
            fraction = shift / float(self.distances[r])
            out.append(ViewCorrection(
                name, degrees, shift * scale, fraction, float(moved[r]),
                world_correction(total[r], to_world), focal, *self._flag(degrees, fraction)))
        return out

    def _flag(self, degrees: float, fraction: float) -> tuple[bool, str]:
        """(flagged, why) for one view's correction against the limits."""
        options, reasons = self.options, []
        if degrees > options.refine_max_degrees:
            reasons.append(f"turned {degrees:.2f} degrees (limit {options.refine_max_degrees})")
        if fraction > options.refine_max_shift:
            reasons.append(f"moved {100 * fraction:.1f}% of its distance "
                           f"(limit {100 * options.refine_max_shift:.1f}%)")
        return bool(reasons), "; ".join(reasons)


def refinement_for(prep: Prepared, frame: Frame, options: FitOptions, device,
                   world: dict[int, np.ndarray] | None = None,
                   fixed: Collection[int] = ()) -> CameraRefinement | None:
    """The training views' `CameraRefinement` when ``options.refine_cameras``, else None.
    world: view index -> the tangency solve's world correction D (4, 4), already
    applied to that view's camera in ``prep`` (the report counts it); fixed: the views
    the solve pinned, which the fit keeps."""
    if not options.refine_cameras:
        return None
    world = world or {}
    to_world = frame.to_world_matrix()
    from_world = np.linalg.inv(to_world)
    cameras = [dataclasses.replace(prep.views[i].camera,
                                   world_to_camera=prep.views[i].camera.world_to_camera @ to_world)
               for i in prep.train_idx]
    base = np.stack([from_world @ world.get(i, np.eye(4)) @ to_world for i in prep.train_idx])
    return CameraRefinement(cameras, prep.train_idx, [prep.names[i] for i in prep.train_idx],
                            options, device, base=base, fixed=fixed)


def _rotation_and_shift(correction: np.ndarray, center: np.ndarray) -> tuple[float, float]:
    """How far a correction D (4, 4) turns a camera (degrees) and moves its centre
    ``center`` (3,) (to D^-1 C, since world_to_camera' = world_to_camera @ D)."""
    cosine = np.clip((np.trace(correction[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
    moved = np.linalg.solve(correction, np.append(center, 1.0))[:3]
    return float(np.degrees(np.arccos(cosine))), float(np.linalg.norm(moved - center))


def correction_messages(corrections: Sequence[ViewCorrection]) -> list[str]:
    """What the result's message says about the refined cameras: the largest correction
    and every flagged view."""
    if not corrections:
        return []
    worst = max(corrections, key=lambda c: c.reprojection_px)
    out = [f"refined {len(corrections)} cameras (largest: {worst.name}, "
           f"{worst.rotation_deg:.2f} degrees, {worst.reprojection_px:.2f} px)"]
    out += [f"the refined camera of {c.name} ran away ({c.reason}): its correction is "
            "flagged and will not be applied; check that view's calibration"
            for c in corrections if c.flagged]
    return out


def reprojection_px(vertices: torch.Tensor, cameras: Sequence[CameraMatrices],
                    corrections: torch.Tensor, log_focal: torch.Tensor) -> np.ndarray:
    """Mean pixel displacement (N,) of ``vertices`` (V, 3, normalised frame) between each
    camera as given and corrected, at the cameras' own (full) resolution."""
    out = []
    for cam, correction in zip(cameras, corrections, strict=True):
        given = Cameras.from_matrices([cam], dtype=vertices.dtype, device=vertices.device)
        moved = corrected_cameras(given, correction[None].to(vertices.dtype), log_focal)
        before = project_points(vertices, given)[0, :, :2]
        after = project_points(vertices, moved)[0, :, :2]
        out.append(float((after - before).norm(dim=1).mean()))
    return np.asarray(out)


def _focal_scaled(intrinsics: np.ndarray, scale: float) -> np.ndarray:
    """K (3, 3) with fx, fy and the skew times ``scale``, as `corrected_cameras` does."""
    out = np.array(intrinsics, dtype=np.float64)
    out[:2, :2] *= scale
    return out


def world_correction(correction: np.ndarray, to_world: np.ndarray) -> np.ndarray:
    """The (4, 4) M with ``matrix_world' = M @ matrix_world`` for a Blender camera, from
    a normalised-frame correction D (4, 4) and the frame's normalised -> world matrix.

    world_to_camera' = world_to_camera @ G with G = F D F^-1 (world -> world), and
    world_to_camera = diag(1, -1, -1, 1) @ matrix_world^-1, so M = G^-1.
    """
    world = to_world @ correction @ np.linalg.inv(to_world)
    return np.linalg.inv(world)


def apply_to_pose(camera: CameraMatrices, correction: ViewCorrection) -> CameraMatrices:
    """``camera`` (world units) with a reported correction applied: the pose through
    ``world_correction`` and fx, fy times ``focal_scale``."""
    pose = camera.world_to_camera @ np.linalg.inv(correction.world_correction)
    return CameraMatrices(_focal_scaled(camera.intrinsics, correction.focal_scale), pose,
                          camera.width, camera.height, camera.orthographic)


def miscalibrated(cameras: Sequence[CameraMatrices], points: np.ndarray, degrees: float,
                  fraction: float, rng: np.random.Generator) -> list[CameraMatrices]:
    """The cameras each turned by ``degrees`` about its centre and its centre moved by
    ``fraction`` of its distance to the centre of ``points`` (P, 3; samples of the object
    they look at, e.g. its vertices, at least 3 not on one line), in random directions
    with no common part: the calibration error the refinement can undo (tests,
    benchmarks).

    A common similarity of all cameras cannot be told from the images, so it is removed,
    in the sense that matters for a fit: the moved cameras put the object where the
    given ones do (their `reconstruction_drift` of ``points`` is the identity, to first
    order). Directions are drawn at random; then, alternately, the moved cameras are
    carried back by their drift (`keep_reconstruction`) and each view's turn and move
    rescaled to the asked sizes, until both hold.
    """
    points = np.asarray(points, dtype=np.float64)
    target = 0.5 * (points.min(axis=0) + points.max(axis=0))
    pose = np.stack([c.world_to_camera for c in cameras])
    centers = camera_centres(pose) - target
    distances = np.linalg.norm(centers, axis=1)
    raw = rng.normal(size=(len(cameras), 2, 3))
    sizes = np.array([np.radians(degrees), fraction])[None, :, None]

    def moved_by(raw: np.ndarray) -> list[CameraMatrices]:
        mats = correction_matrices(torch.tensor(raw[:, 0]),
                                   torch.tensor(raw[:, 1] * distances[:, None]),
                                   torch.tensor(centers)).numpy()
        shift = np.eye(4)
        shift[:3, 3] = -target
        return [dataclasses.replace(c, world_to_camera=c.world_to_camera @ np.linalg.inv(shift)
                                    @ m @ shift) for c, m in zip(cameras, mats, strict=True)]

    for _ in range(30):
        raw = raw / np.linalg.norm(raw, axis=2, keepdims=True) * sizes
        kept = keep_reconstruction(cameras, moved_by(raw), points)
        raw = np.stack([_raw_correction(a.world_to_camera, b.world_to_camera, c + target, d)
                        for a, b, c, d in zip(cameras, kept, centers, distances, strict=True)])
    raw = raw / np.linalg.norm(raw, axis=2, keepdims=True) * sizes
    return moved_by(raw)


def _raw_correction(given: np.ndarray, moved: np.ndarray, center: np.ndarray,
                    distance: float) -> np.ndarray:
    """(2, 3): [w, t / distance] of the correction D = given^-1 @ moved (rigid (4, 4)
    world -> camera poses), D x = R(w) (x - C) + C + t with C the given camera's
    ``center`` (3,) in world coordinates."""
    correction = np.linalg.inv(given) @ moved
    turn = Rotation.from_matrix(correction[:3, :3]).as_rotvec()
    shift = correction[:3, :3] @ center + correction[:3, 3] - center
    return np.stack([turn, shift / distance])
