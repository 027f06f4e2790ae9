"""Shape optimisation from Blender's default cube: fixed topology vs large steps + remeshing.

    python benchmarks/bench_remesh.py [--steps 300] [--max-faces 6000] [--remesh-every 10]
                                       [--methods ...]

The target is the Spot cow (tests' shared data), scaled to a bounding-box diagonal of 2;
each method fits a mesh to 20k points sampled on it with a Chamfer loss (4k points
sampled on the fitted mesh per step), starting from the 12-triangle default cube set to
the target's bounding box. Methods:

- adam-offsets: Adam on the vertices of the cube subdivided to about 3k faces, with a
  uniform-Laplacian penalty (the fixed-topology baseline);
- large-steps: `AdamUniform` on u = (I + 19 L) v, the cube subdivided as above;
- large-steps+continuous: the same from the 12-triangle cube, `remesh` every 10 steps
  toward a target edge length shrinking geometrically to the finest of: 2 pixels of 16
  views of 256 px (`pixel_target_lengths`) and the face budget (`edge_length_for_faces`),
  the optimiser's moments carried across (`vertex_state` / `replace_parameter`), then
  `tangential_relaxation` evens the triangles;
- large-steps+botsch: the same schedule, remeshed only at 4 points with
  `gpytoolbox.remesh_botsch` (isotropic, on the CPU); its vertices have no correspondence
  to the old ones, so the optimiser restarts after each remesh.

Printed per method: wall time, Chamfer distance to the target surface (mean of both
directions, 20k points each, relative to the bounding-box diagonal), faces, and the
minimum-angle distribution (smallest, 1st percentile, mean, share of faces under 20
degrees). Not a test; timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO_ROOT)

from backend.core import threads  # noqa: E402

threads.apply()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend.core.camera import blender_camera, orbit_cameras  # noqa: E402
from backend.fit.large_steps import AdamUniform, SmoothSystem  # noqa: E402
from backend.fit.mesh_ops import (  # noqa: E402
    face_areas,
    laplacian,
    sample_surface,
    signed_volume,
    subdivide,
)
from backend.fit.remesh import (  # noqa: E402
    edge_length_for_faces,
    pixel_target_lengths,
    remesh,
    replace_parameter,
    tangential_relaxation,
    vertex_state,
)

SPOT = REPO_ROOT.parent / "shared" / "data" / "meshes" / "spot" / "spot_triangulated.obj"
TARGET_POINTS = 20000
STEP_POINTS = 4000
LAMBDA = 19.0
PIXELS = 2.0
RELAX = 0.5
# Second moments that forget within a few steps: gradients shrink per vertex as the mesh
# refines, and a carried, stale maximum would stall the uniform step.
REMESH_BETAS = (0.8, 0.8)
METHODS = ("adam-offsets", "large-steps", "large-steps+continuous", "large-steps+botsch")


def load_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Triangulated OBJ -> vertices (V, 3) float64 centred, diagonal 2; faces (F, 3) int64."""
    verts, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    v = np.array(verts)
    lo, hi = v.min(0), v.max(0)
    return (v - (lo + hi) / 2) * (2.0 / np.linalg.norm(hi - lo)), np.array(faces, dtype=np.int64)


def default_cube(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blender's default cube (8 vertices, 12 outward triangles) stretched to a box."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    faces = np.array([[q[0], q[1], q[2]] for q in quads] + [[q[0], q[2], q[3]] for q in quads])
    v = lo + corners * (hi - lo)
    return v, (faces if signed_volume(v, faces) > 0 else faces[:, ::-1].copy())


def sample_points(v: torch.Tensor, f: torch.Tensor, count: int, gen: torch.Generator):
    """(count, 3) points uniformly over the surface, differentiable in v."""
    p = v[f]
    area = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1).norm(dim=1).detach()
    chosen = torch.multinomial(area, count, replacement=True, generator=gen)
    r = torch.rand(count, 2, generator=gen, dtype=v.dtype)
    s = r[:, :1].sqrt()
    w = torch.cat([1 - s, s * (1 - r[:, 1:]), s * r[:, 1:]], dim=1)
    return (w[:, :, None] * p[chosen]).sum(dim=1)


class ChamferLoss:
    """Symmetric Chamfer loss to fixed target points (N, 3): mean squared nearest distances
    both ways. Nearest neighbours come from k-d trees (no gradient through the matching);
    the distances of the matched pairs are differentiable in the sampled points."""

    def __init__(self, target: torch.Tensor):
        from scipy.spatial import cKDTree

        self.target = target
        self.tree = cKDTree(target.numpy())

    def __call__(self, points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from scipy.spatial import cKDTree

        batch = self.target[torch.randint(len(self.target), (STEP_POINTS,), generator=gen)]
        p = points.detach().numpy()
        to_target = torch.as_tensor(self.tree.query(p)[1])
        to_points = torch.as_tensor(cKDTree(p).query(batch.numpy())[1])
        return ((points - self.target[to_target]).pow(2).sum(1).mean()
                + (points[to_points] - batch).pow(2).sum(1).mean())


def fit_adam(v0, f0, loss_fn, steps, lr=2e-3, smooth=20.0):
    """Adam on vertex positions plus smooth * |L v|^2; topology fixed."""
    v = torch.nn.Parameter(torch.tensor(v0, dtype=torch.float32))
    f = torch.tensor(f0)
    L = laplacian(f0, len(v0))  # (V, V) sparse I - D^-1 A
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(sample_points(v, f, STEP_POINTS, gen), gen)
        loss = loss + smooth * torch.sparse.mm(L, v).pow(2).sum(dim=1).mean()
        loss.backward()
        opt.step()
    return v.detach().numpy().astype(np.float64), f0


def target_schedule(step: int, steps: int, start: float, finest: np.ndarray) -> np.ndarray:
    """Per-vertex target length: geometric from `start` down to `finest` at 60% of the steps."""
    t = min(1.0, step / (0.6 * steps))
    return np.maximum(start * (finest.min() / start) ** t, finest)


def finest_lengths(v: np.ndarray, f: np.ndarray, cameras, max_faces: int) -> np.ndarray:
    """Per-vertex finest edge length: PIXELS pixels in the views, and the face budget."""
    budget = edge_length_for_faces(float(face_areas(v, f).sum()), max_faces)
    return np.maximum(pixel_target_lengths(v, cameras, PIXELS), budget)


def fit_large_steps(v0, f0, loss_fn, steps, *, remesh_mode=None, cameras=None, max_faces=6000,
                    lr=2e-2, remesh_every=10, betas=(0.9, 0.999)):
    """AdamUniform on u = (I + LAMBDA L) v; remesh_mode None, "continuous" or "botsch"."""
    v = torch.tensor(v0, dtype=torch.float32)
    f = torch.tensor(f0)
    system = SmoothSystem.build(f, len(v), lam=LAMBDA)
    u = torch.nn.Parameter(system.to_differential(v))
    opt = AdamUniform([u], lr=lr, betas=betas)
    gen = torch.Generator().manual_seed(0)
    start = 0.25
    botsch_at = {int(steps * x) for x in (0.1, 0.25, 0.4, 0.6)}
    for step in range(steps):
        remesh_now = (remesh_mode == "continuous" and step % remesh_every == 0) or (
            remesh_mode == "botsch" and step in botsch_at)
        if remesh_now:
            vn, fn = v.detach().double().numpy(), f.numpy()
            target_len = target_schedule(step, steps, start,
                                         finest_lengths(vn, fn, cameras, max_faces))
            v, f, u, system = _remeshed(remesh_mode, v, f, target_len, opt, u, max_faces)
        opt.zero_grad()
        v = system.from_differential(u)
        loss_fn(sample_points(v, f, STEP_POINTS, gen), gen).backward()
        opt.step()
    v = system.from_differential(u.detach())
    return v.numpy().astype(np.float64), f.numpy()


def _remeshed(mode, v, f, target_len, opt, u, max_faces):
    """New (v, f, u, system) after one remesh; the optimiser now holds the new u."""
    v = v.detach()
    if mode == "continuous":
        r = remesh(v, f, torch.tensor(target_len, dtype=v.dtype), vertex_state(opt, u),
                   max_faces=max_faces)
        v, f, carried = tangential_relaxation(r.vertices, r.faces, RELAX), r.faces, r.attributes
    else:
        import gpytoolbox

        vn, fn = gpytoolbox.remesh_botsch(v.double().numpy(), f.numpy().astype(np.int32), 10,
                                          float(np.median(target_len)), True)
        v, f, carried = torch.tensor(vn, dtype=torch.float32), torch.tensor(fn).long(), {}
    system = SmoothSystem.build(f, len(v), lam=LAMBDA)
    new_u = torch.nn.Parameter(system.to_differential(v))
    replace_parameter(opt, u, new_u, carried)
    if not carried:
        opt.state[new_u] = {}  # no correspondence: the moments restart
    return v, f, new_u, system


def chamfer_distance(v_a, f_a, v_b, f_b) -> float:
    """Symmetric Chamfer distance over 20k surface points each (units of the diagonal 2)."""
    from scipy.spatial import cKDTree

    pa = sample_surface(v_a, f_a, TARGET_POINTS, seed=1)
    pb = sample_surface(v_b, f_b, TARGET_POINTS, seed=2)
    d = 0.5 * (cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean())
    return float(d / 2.0)


def min_angles(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Smallest angle of each face (F,) in degrees."""
    p = v[f]
    a = np.roll(p, -1, axis=1) - p
    b = np.roll(p, 1, axis=1) - p
    cos = np.einsum("fkc,fkc->fk", a, b) / (np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2))
    return np.degrees(np.arccos(np.clip(cos, -1, 1))).min(axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max-faces", type=int, default=6000)
    parser.add_argument("--remesh-every", type=int, default=10,
                        help="steps between two continuous remeshing calls")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    tv, tf = load_obj(SPOT)
    loss_fn = ChamferLoss(torch.tensor(sample_surface(tv, tf, TARGET_POINTS, seed=0),
                                      dtype=torch.float32))
    cube_v, cube_f = default_cube(tv.min(0), tv.max(0))
    dense_v, dense_f = cube_v, cube_f
    for _ in range(4):
        dense_v, dense_f = subdivide(dense_v, dense_f)
    cameras = [blender_camera(matrix_world=m, resolution_x=256, resolution_y=256, lens=50.0)
               for m in orbit_cameras(8, [-20.0, 30.0], 4.0)]
    print(f"target: Spot, {len(tf)} faces; {args.steps} steps; torch threads "
          f"{torch.get_num_threads()}; max faces {args.max_faces}")
    print(f"{'method':<24} {'time s':>7} {'chamfer':>8} {'faces':>6} {'min ang':>8} "
          f"{'p1 ang':>7} {'mean ang':>8} {'<20deg':>7}")
    for method in args.methods:
        t0 = time.perf_counter()
        if method == "adam-offsets":
            v, f = fit_adam(dense_v, dense_f, loss_fn, args.steps)
        elif method == "large-steps":
            v, f = fit_large_steps(dense_v, dense_f, loss_fn, args.steps)
        else:
            v, f = fit_large_steps(cube_v, cube_f, loss_fn, args.steps,
                                   remesh_mode=method.split("+")[1], cameras=cameras,
                                   max_faces=args.max_faces, betas=REMESH_BETAS,
                                   remesh_every=args.remesh_every)
        seconds = time.perf_counter() - t0
        ang = min_angles(v, f)
        print(f"{method:<24} {seconds:7.1f} {chamfer_distance(v, f, tv, tf):8.5f} {len(f):6d} "
              f"{ang.min():8.2f} {np.percentile(ang, 1):7.2f} {ang.mean():8.2f} "
              f"{100 * np.mean(ang < 20):6.1f}%")


if __name__ == "__main__":
    main()
