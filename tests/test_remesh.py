"""Adaptive remeshing: valid closed manifolds after every call, state carried, pixel targets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import has_cuda, icosphere

from backend.core.camera import blender_camera, look_at
from backend.fit.mesh_ops import check_mesh, signed_volume
from backend.fit.quality import crossing_pairs
from backend.fit.remesh import (
    MIN_SINE,
    pixel_target_lengths,
    remesh,
    replace_parameter,
    tangential_relaxation,
    untangle,
    vertex_state,
)


def oriented(v: np.ndarray, f: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    f = np.asarray(f, dtype=np.int64)
    if signed_volume(v, f) < 0:
        f = f[:, ::-1].copy()
    return torch.tensor(v, dtype=torch.float64), torch.tensor(f)


def box(size=(1.0, 1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Blender's default cube (12 triangles), scaled per axis."""
    v = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=np.float64) * size
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    f = [[q[0], q[1], q[2]] for q in quads] + [[q[0], q[2], q[3]] for q in quads]
    return oriented(v, f)


def uv_sphere(segments: int, rings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A UV sphere: fans of thin triangles at the poles, slivers when segments >> rings."""
    theta = np.pi * np.arange(1, rings) / rings
    phi = 2 * np.pi * np.arange(segments) / segments
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 0, 1]], ring, [[0, 0, -1]]])
    idx = 1 + np.arange((rings - 1) * segments).reshape(rings - 1, segments)
    nxt = np.roll(idx, -1, axis=1)
    f = [np.stack([np.zeros(segments, int), idx[0], nxt[0]], 1),
         np.stack([np.full(segments, len(v) - 1), nxt[-1], idx[-1]], 1)]
    for r in range(rings - 2):
        f += [np.stack([idx[r], idx[r + 1], nxt[r + 1]], 1),
              np.stack([idx[r], nxt[r + 1], nxt[r]], 1)]
    return oriented(v, np.concatenate(f))


def torus(major=16, minor=8, R=1.0, r=0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """A torus around the z axis (genus one)."""
    a, b = np.meshgrid(2 * np.pi * np.arange(major) / major,
                       2 * np.pi * np.arange(minor) / minor, indexing="ij")
    v = np.stack([(R + r * np.cos(b)) * np.cos(a), (R + r * np.cos(b)) * np.sin(a),
                  r * np.sin(b)], -1).reshape(-1, 3)
    i = np.arange(major * minor).reshape(major, minor)
    i1, j1 = np.roll(i, -1, 0), np.roll(i, -1, 1)
    ij = np.roll(i1, -1, 1)
    f = np.concatenate([np.stack([i, i1, ij], -1).reshape(-1, 3),
                        np.stack([i, ij, j1], -1).reshape(-1, 3)])
    return oriented(v, f)


def bumpy_sphere(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An icosphere with random radial bumps (a star-shaped random surface)."""
    v, f = icosphere(3)
    rng = np.random.default_rng(seed)
    return v * torch.tensor(1 + 0.15 * rng.random((len(v), 1))), f


def outward(v: torch.Tensor, f: torch.Tensor, shape: str) -> torch.Tensor:
    """(F,) the direction each face should face: out of the shape's core (origin or ring)."""
    centre = v[f].mean(dim=1)
    if shape != "torus":
        return centre
    ring = torch.nn.functional.normalize(centre * torch.tensor([1.0, 1.0, 0.0]), dim=1)
    return centre - ring


def assert_valid(v: torch.Tensor, f: torch.Tensor, shape: str) -> None:
    report = check_mesh(f.numpy())
    assert report.closed_manifold and report.inconsistent_edges == 0, report
    assert len(np.unique(f.numpy())) == len(v), "every vertex is used by a face"
    p = v[f]
    normal = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1)
    longest = (p.roll(-1, dims=1) - p).norm(dim=2).amax(dim=1)
    assert bool((normal.norm(dim=1) / longest**2 > MIN_SINE).all()), "a degenerate face"
    facing = (normal * outward(v, f, shape)).sum(dim=1)
    assert bool((facing > 0).all()), f"{int((facing <= 0).sum())} faces turned inside out"


def tetrahedron() -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest closed mesh: nothing may collapse."""
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)
    return oriented(v, [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])


SHAPES = {
    "tetrahedron": (tetrahedron, 3.0),
    "cube": (box, 0.35),
    "sliver_box": (lambda: box((2.0, 0.05, 0.05)), 0.2),
    "uv_sphere_slivers": (lambda: uv_sphere(48, 4), 0.25),
    "torus": (torus, 0.12),
    "bumpy_sphere": (lambda: bumpy_sphere(3), 0.3),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_every_call_leaves_a_valid_closed_manifold(shape, scale):
    build, target = SHAPES[shape]
    v, f = build()
    genus_before = len(v) - len(f) // 2  # Euler characteristic V - E + F = V - F / 2
    for _ in range(6):
        result = remesh(v, f, torch.tensor(target * scale))
        v, f = result.vertices, result.faces
        assert_valid(v, f, shape)
    assert len(v) - len(f) // 2 == genus_before, "the topology's genus is kept"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_per_vertex_targets_in_float32_keep_the_mesh_valid(shape, seed):
    build, target = SHAPES[shape]
    v, f = build()
    v = v.float()
    rng = np.random.default_rng(seed)
    lengths = torch.tensor(target * np.exp(rng.uniform(-1.2, 1.2, len(v))), dtype=v.dtype)
    for _ in range(6):
        result = remesh(v, f, lengths)
        v, f, lengths = result.vertices, result.faces, result.target_length
        assert_valid(v.double(), f, shape)


def test_edges_end_near_the_target_length():
    v, f = icosphere(2)
    for _ in range(15):
        r = remesh(v, f, torch.tensor(0.12))
        v, f = r.vertices, r.faces
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    length = (v[e[:, 0]] - v[e[:, 1]]).norm(dim=1)
    assert 0.5 * 0.12 <= float(length.min()) and float(length.max()) <= 1.5 * 0.12


def test_per_vertex_targets_refine_only_where_asked():
    v, f = icosphere(2)
    target = torch.where(v[:, 2] > 0, 0.08, 0.4).to(v.dtype)
    for _ in range(6):
        r = remesh(v, f, target)
        v, f, target = r.vertices, r.faces, r.target_length
    top = v[f].mean(dim=1)[:, 2] > 0.2
    assert int(top.sum()) > 3 * int((v[f].mean(dim=1)[:, 2] < -0.2).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_deterministic_for_a_seed(seed):
    runs = []
    for _ in range(2):
        v, f = bumpy_sphere(seed)
        target = torch.tensor(np.random.default_rng(seed).uniform(0.1, 0.4, len(v)))
        for _ in range(3):
            r = remesh(v, f, target, {"m": v.clone()})
            v, f, target = r.vertices, r.faces, r.target_length
        runs.append((v, f, r.attributes["m"]))
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a, b)


def test_face_budget_caps_the_splits():
    v, f = icosphere(1)
    r = remesh(v, f, torch.tensor(0.05), max_faces=200)
    assert len(f) < len(r.faces) <= 200
    assert_valid(r.vertices, r.faces, "sphere")


def test_split_gives_new_vertices_the_mean_of_the_edge_ends():
    v, f = icosphere(1)
    V = len(v)
    target = torch.full((V,), 0.6, dtype=v.dtype)
    target[0] = 0.05  # every edge at vertex 0 gets a target of about half its length
    state = {"exp_avg": torch.randn(V, 3, dtype=v.dtype), "colour": torch.rand(V, 1).double()}
    r = remesh(v, f, target, state)
    assert r.splits > 0 and r.collapses == 0 and len(r.vertices) == V + r.splits
    for name, x in state.items():
        assert torch.equal(r.attributes[name][:V], x)
    midpoints = {(i, j): (v[i] + v[j]) / 2 for i, j in itertools.combinations(range(V), 2)}
    for k in range(V, len(r.vertices)):
        (i, j), = [e for e, m in midpoints.items() if torch.allclose(m, r.vertices[k])]
        assert 0 in (i, j)
        for name, x in state.items():
            assert torch.allclose(r.attributes[name][k], (x[i] + x[j]) / 2)


def test_collapse_merges_the_two_ends_state():
    v, f = icosphere(1)
    V = len(v)
    a, b = [int(x) for x in f[0, :2]]
    v = v.clone()
    mid, half = (v[a] + v[b]) / 2, (v[b] - v[a]) / 2
    v[a], v[b] = mid - 0.05 * half, mid + 0.05 * half  # edge a-b much shorter than the rest
    moments = torch.randn(V, 3, dtype=v.dtype)
    r = remesh(v, f, torch.tensor(0.6), {"exp_avg_sq": moments})
    assert r.collapses == 1 and len(r.vertices) == V - 1
    merged = int((r.vertices - (v[a] + v[b]) / 2).norm(dim=1).argmin())
    assert torch.allclose(r.vertices[merged], (v[a] + v[b]) / 2)
    assert torch.allclose(r.attributes["exp_avg_sq"][merged], (moments[a] + moments[b]) / 2)
    others = [i for i in range(V) if i not in (a, b)]
    kept = (r.vertices[:, None] - v[others][None]).norm(dim=2).argmin(dim=0)
    assert torch.equal(r.attributes["exp_avg_sq"][kept], moments[others])


def test_optimizer_state_survives_the_topology_change():
    v, f = icosphere(1)
    param = torch.nn.Parameter(v.clone())
    opt = torch.optim.Adam([param], lr=1e-2)
    param.grad = torch.randn_like(param)
    opt.step()
    r = remesh(param.detach(), f, torch.tensor(0.3), vertex_state(opt, param))
    new = torch.nn.Parameter(r.vertices)
    replace_parameter(opt, param, new, r.attributes)
    state = opt.state[new]
    assert int(state["step"]) == 1 and state["exp_avg"].shape == new.shape
    assert param not in opt.state and opt.param_groups[0]["params"][0] is new
    new.grad = torch.randn_like(new)
    opt.step()


def test_relaxation_evens_triangles_and_stays_on_the_surface():
    v, f = icosphere(2)
    jitter = 0.04 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0),
                                dtype=v.dtype)
    v = torch.nn.functional.normalize(v + jitter, dim=1)  # uneven triangles on the sphere
    relaxed = v
    for _ in range(5):
        relaxed = tangential_relaxation(relaxed, f, 0.5)
        relaxed = relaxed / relaxed.norm(dim=1, keepdim=True)  # back onto the sphere
    assert_valid(relaxed, f, "sphere")
    one = tangential_relaxation(v, f, 0.5)
    assert float((one.norm(dim=1) - 1).abs().max()) < 0.02  # a tangential move
    assert min_angle_degrees(relaxed, f).min() > min_angle_degrees(v, f).min() + 5


def min_angle_degrees(v: torch.Tensor, f: torch.Tensor) -> np.ndarray:
    p = v[f].numpy()
    a, b = np.roll(p, -1, axis=1) - p, np.roll(p, 1, axis=1) - p
    cos = (a * b).sum(2) / (np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2))
    return np.degrees(np.arccos(np.clip(cos, -1, 1))).min(axis=1)


def test_rejects_open_and_inconsistent_meshes():
    v, f = icosphere(1)
    with pytest.raises(ValueError, match="closed manifold"):
        remesh(v, f[1:], torch.tensor(0.3))
    flipped = f.clone()
    flipped[0] = flipped[0].flip(0)
    with pytest.raises(ValueError, match="orientation"):
        remesh(v, flipped, torch.tensor(0.3))
    with pytest.raises(ValueError, match="target_length"):
        remesh(v, f, torch.zeros(len(v)))
    with pytest.raises(ValueError, match="finite"):
        remesh(v * float("nan"), f, torch.tensor(0.3))


def test_pixel_targets_scale_with_depth_and_focal_length():
    cam = blender_camera(matrix_world=look_at((0, -5, 0), (0, 0, 0)), resolution_x=100,
                         resolution_y=100, lens=50.0, sensor_width=36.0)
    focal = 50.0 / 36.0 * 100
    points = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, -10.0, 0.0]])  # last: behind
    length = pixel_target_lengths(points, [cam], pixels=4.0)
    np.testing.assert_allclose(length[:2], [4 * 5 / focal, 4 * 7 / focal])
    assert length[2] == length[:2].max()
    ortho = blender_camera(matrix_world=look_at((0, -5, 0), (0, 0, 0)), resolution_x=100,
                           resolution_y=100, camera_type="ORTHO", ortho_scale=2.0)
    np.testing.assert_allclose(pixel_target_lengths(points[:1], [cam, ortho], 4.0), [4 / 50])
    with pytest.raises(ValueError, match="no camera sees"):
        pixel_target_lengths(points[2:], [cam], 4.0)


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs an NVIDIA GPU")
def test_cuda_remeshes_validly_and_deterministically():
    v, f = bumpy_sphere(0)
    target = torch.tensor(np.random.default_rng(0).uniform(0.1, 0.4, len(v)))
    cpu = remesh(v, f, target)
    runs = [remesh(v.cuda(), f.cuda(), target.cuda()) for _ in range(2)]
    assert torch.equal(runs[0].faces, runs[1].faces)
    assert_valid(runs[0].vertices.cpu(), runs[0].faces.cpu(), "sphere")
    # Rounding differs between devices, so borderline edges may go either way.
    assert abs(len(runs[0].faces) - len(cpu.faces)) <= 0.02 * len(cpu.faces)


def test_untangle_removes_a_spike_through_the_far_side_and_moves_nothing_else():
    v, f = icosphere(3)
    folded = v.clone()
    folded[0] = -1.4 * v[0]  # one vertex pushed through the sphere: a spike out the far side
    assert len(crossing_pairs(folded.numpy(), f.numpy())) > 0
    out, left = untangle(folded, f)
    assert left == 0 and len(crossing_pairs(out.numpy(), f.numpy())) == 0
    moved = (out - folded).norm(dim=1) > 0
    assert moved[0] and moved.sum() < 0.25 * len(v)  # only around the crossings
    assert check_mesh(f.numpy()).closed_manifold


def test_untangle_opens_a_pit_pushed_through_the_surface():
    v, f = icosphere(3)
    dented = v.clone()
    cap = v[:, 2] > 0.7
    # The cap pushed into the sphere and widened: the pit's walls cross the sides.
    dented[cap, :2] *= 1.6
    dented[cap, 2] = 0.4 - (v[cap, 2] - 0.7)
    assert len(crossing_pairs(dented.numpy(), f.numpy())) > 0
    out, left = untangle(dented, f, rounds=20)
    assert left == 0 and len(crossing_pairs(out.numpy(), f.numpy())) == 0


def test_untangle_leaves_a_clean_mesh_as_it_is():
    v, f = icosphere(3)
    out, left = untangle(v, f)
    assert left == 0 and torch.equal(out, v)
