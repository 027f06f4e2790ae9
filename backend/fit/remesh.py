"""Adaptive topology: local remeshing toward per-vertex target edge lengths.

`remesh` collapses short edges, splits long ones and flips edges toward valence 6, the
local operations of continuous remeshing (Palfinger 2022), written here in vectorised
torch so it runs wherever the tensors are (CPU or CUDA) and is deterministic (no random
choice: ties are broken by edge index). Every operation works on a set of edges chosen so
that no two touch the same faces, so they can be applied at once, and each is checked
before it is applied: the mesh stays a closed, oriented 2-manifold with no degenerate or
folded faces after every call (the input must be one; `connectivity` says what is wrong
otherwise).

Per-vertex data (optimiser moments, colours, target lengths) goes along: a vertex made by
a split gets the mean of the edge's two ends, a collapse merges the two into their mean.
`vertex_state` and `replace_parameter` carry a torch optimiser's state across the change.

`untangle` smooths the surface locally where it passes through itself (the fit calls it
every few steps and at the end, `backend.fit.loop`).

`pixel_target_lengths` turns a target edge length in pixels into scene units per vertex,
from the cameras that see it; `edge_length_for_faces` turns a face budget into a length.

In a large-steps loop (`backend.fit.large_steps`), every few steps::

    r = remesh(v.detach(), faces, target, vertex_state(opt, u), max_faces=budget)
    v, faces = tangential_relaxation(r.vertices, r.faces), r.faces
    system = SmoothSystem.build(faces, len(v))
    new_u = torch.nn.Parameter(system.to_differential(v))
    replace_parameter(opt, u, new_u, r.attributes)  # moments interpolated and merged
    u = new_u
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.camera import CameraMatrices
from .mesh_ops import vertex_normals
from .quality import crossing_pairs

SPLIT_RATIO = 1.5  # split edges longer than this times their target length
COLLAPSE_RATIO = 0.5  # collapse edges shorter than this times their target length
NEEDLE_RATIO = 0.2  # ... and the shortest edge of a face whose longest is 1 / this longer
MAX_FOLD_COS = 0.3  # a collapse may turn a face's normal by at most acos(0.3), 73 degrees
FLIP_MAX_DIHEDRAL_COS = np.cos(np.radians(25.0))  # only flip edges of near-planar pairs
FLIP_ANGLE_WEIGHT = 6.0  # valence units worth one radian of minimum angle in a flip
MIN_SINE = 1e-4  # a face whose smallest angle has a smaller sine is degenerate
UNTANGLE_ROUNDS = 4  # detect-and-smooth rounds of `untangle`
UNTANGLE_RINGS = 2  # rings of neighbours smoothed around each crossing triangle
UNTANGLE_STEPS = 6  # umbrella smoothing steps per round
_BIG = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class Connectivity:
    """Edges of a closed, consistently oriented manifold triangle mesh (all int64 tensors).

    edges: (E, 2) vertex pairs, smaller index first. face_edges: (F, 3) the edge of each
    face side (corner k to corner k + 1). edge_faces: (E, 2) the face that runs the edge
    from edges[:, 0] to edges[:, 1], then the other one. opposite: (E, 2) those faces'
    third vertices. valence: (V,) edges per vertex.
    """

    edges: torch.Tensor
    face_edges: torch.Tensor
    edge_faces: torch.Tensor
    opposite: torch.Tensor
    valence: torch.Tensor


def connectivity(faces: torch.Tensor, n_vertices: int) -> Connectivity:
    """Edge structure of faces (F, 3) int64; ValueError unless closed, manifold, oriented."""
    F = faces.shape[0]
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)  # (3F, 2)
    lo, hi = half.min(dim=1).values, half.max(dim=1).values
    if bool((lo == hi).any()):
        raise ValueError("a face repeats a vertex: remove degenerate faces before remeshing")
    keys, inverse, counts = torch.unique(lo * n_vertices + hi, return_inverse=True,
                                         return_counts=True)
    if bool((counts != 2).any()):
        raise ValueError(
            f"the mesh is not a closed manifold ({int((counts == 1).sum())} boundary edges, "
            f"{int((counts > 2).sum())} edges shared by more than two faces): remeshing needs "
            "a watertight surface; close holes or start from the visual hull"
        )
    forward = (half[:, 0] < half[:, 1]).long()
    if bool((torch.bincount(inverse, forward, minlength=len(keys)) != 1).any()):
        raise ValueError("neighbouring faces disagree in orientation: make normals consistent")
    E = len(keys)
    slot = 1 - forward
    corner = torch.arange(3 * F, device=faces.device)
    edge_faces = torch.empty((E, 2), dtype=torch.long, device=faces.device)
    opposite = torch.empty_like(edge_faces)
    edge_faces[inverse, slot] = corner // 3
    opposite[inverse, slot] = faces.reshape(-1)[(corner // 3) * 3 + (corner + 2) % 3]
    edges = torch.stack([keys // n_vertices, keys % n_vertices], dim=1)
    valence = torch.bincount(edges.reshape(-1), minlength=n_vertices)
    return Connectivity(edges, inverse.reshape(F, 3), edge_faces, opposite, valence)


def _padded_groups(group: torch.Tensor, members: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(n_groups, D) int64: row g lists the members whose group is g, padded with -1."""
    order = torch.argsort(group, stable=True)
    g = group[order]
    counts = torch.bincount(g, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(g), device=g.device) - starts[g]
    width = int(counts.max()) if len(g) else 0
    out = torch.full((n_groups, width), -1, dtype=torch.long, device=g.device)
    out[g, rank] = members[order]
    return out


def _face_geometry(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner positions (..., 3, 3) -> (normal * 2 area (..., 3), sine of smallest angle (...))."""
    sides = p.roll(-1, dims=-2) - p  # side k from corner k to k + 1
    normal = torch.cross(p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 0, :], dim=-1)
    longest = sides.norm(dim=-1).amax(dim=-1)
    # sin(smallest angle) = 2 area / (product of the two longest sides) >= 2 area / longest^2
    return normal, normal.norm(dim=-1) / longest.clamp_min(1e-30) ** 2


def _min_angle(p: torch.Tensor) -> torch.Tensor:
    """Smallest interior angle (...) in radians of triangles with corners (..., 3, 3)."""
    a = p.roll(-1, dims=-2) - p
    b = p.roll(1, dims=-2) - p
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
    return torch.arccos(cos.clamp(-1.0, 1.0)).amin(dim=-1)


def _independent(rank: torch.Tensor, touched: torch.Tensor, n_vertices: int) -> torch.Tensor:
    """Which candidates (C,) bool to apply at once: no vertex touched by two of them.

    rank: (C,) distinct priorities, smaller first; touched: (C, K) vertices each candidate
    changes (-1 for none). A candidate wins when it has the best rank at all its vertices.
    """
    valid = touched >= 0
    best = torch.full((n_vertices + 1,), _BIG, dtype=torch.long, device=rank.device)
    slots = torch.where(valid, touched, n_vertices)
    best.scatter_reduce_(0, slots.reshape(-1), rank[:, None].expand_as(slots).reshape(-1), "amin")
    return ((best[slots] == rank[:, None]) | ~valid).all(dim=1)


def _rank(priority: torch.Tensor) -> torch.Tensor:
    """Distinct integer ranks (C,) int64 by priority, ties broken by position."""
    order = torch.argsort(priority, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank


@dataclass
class RemeshResult:
    """A remeshed surface and what was done.

    vertices (V', 3) float, faces (F', 3) int64, target_length (V',), attributes: the
    caller's per-vertex tensors (V', ...) carried along; counts of the operations applied.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    target_length: torch.Tensor
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    collapses: int = 0
    splits: int = 0
    flips: int = 0


@dataclass
class _Mesh:
    """Working state: vertices (V, 3), faces (F, 3), per-vertex data (V, ...) by name."""

    vertices: torch.Tensor
    faces: torch.Tensor
    data: dict[str, torch.Tensor]

    def mean_of(self, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-vertex data averaged over vertex pairs (K, 2): {name: (K, ...)}."""
        return {k: 0.5 * (x[pairs[:, 0]] + x[pairs[:, 1]]) for k, x in self.data.items()}


_TARGET = "\0target_length"  # the key of the target lengths among the carried data


def remesh(vertices: torch.Tensor, faces: torch.Tensor, target_length: torch.Tensor,
           attributes: dict[str, torch.Tensor] | None = None, *, max_faces: int | None = None,
           flip_rounds: int = 2) -> RemeshResult:
    """One round of collapses, splits and flips toward the per-vertex target lengths.

    vertices: (V, 3) float tensor (detached here: the result is a new leaf's data);
    faces: (F, 3) int64, a closed oriented manifold, on the same device;
    target_length: (V,) or scalar, the wanted edge length around each vertex (an edge's
    target is the mean of its ends'); attributes: per-vertex tensors (V, ...) to carry;
    max_faces: no splits beyond this many faces (longest edges first when short of room).
    Edges longer than SPLIT_RATIO x target are split at their midpoint, edges shorter than
    COLLAPSE_RATIO x target (and needle faces' shortest edges) collapse to their midpoint.
    """
    V = vertices.shape[0]
    if vertices.dim() != 2 or vertices.shape[1] != 3 or not bool(torch.isfinite(vertices).all()):
        raise ValueError("vertices must be a (V, 3) tensor of finite numbers: a NaN or infinite "
                         "position means the optimisation diverged; lower the learning rate")
    target = torch.as_tensor(target_length, dtype=vertices.dtype, device=vertices.device)
    target = target.expand(V) if target.dim() == 0 else target
    if target.shape != (V,) or not bool((target > 0).all()):
        raise ValueError(f"target_length must be positive, one per vertex ({V}), "
                         f"got shape {tuple(target.shape)}")
    attributes = dict(attributes or {})
    for name, x in attributes.items():
        if x.shape[0] != V:
            raise ValueError(f"attribute {name!r} has {x.shape[0]} rows, the mesh {V} vertices")
    if max_faces is not None and max_faces < 4:
        raise ValueError(f"max_faces must allow a closed mesh (at least 4), got {max_faces}")
    faces = faces.to(device=vertices.device, dtype=torch.long)
    data = {k: x.detach().clone() for k, x in {_TARGET: target, **attributes}.items()}
    mesh = _Mesh(vertices.detach().clone(), faces, data)
    connectivity(mesh.faces, V)  # validates the input
    collapses = _collapse(mesh)
    budget = max_faces if max_faces is not None else _BIG
    splits = _split(mesh, budget)
    flips = sum(_flip(mesh) for _ in range(flip_rounds))
    connectivity(mesh.faces, mesh.vertices.shape[0])  # the invariant the operations keep
    target = mesh.data.pop(_TARGET)
    return RemeshResult(mesh.vertices, mesh.faces, target, mesh.data, collapses, splits, flips)


def _collapse(mesh: _Mesh) -> int:
    """Collapse short and needle edges whose collapse keeps a valid surface; returns the count."""
    v, f = mesh.vertices, mesh.faces
    V = v.shape[0]
    c = connectivity(f, V)
    a, b = c.edges[:, 0], c.edges[:, 1]
    length = (v[a] - v[b]).norm(dim=1)
    target = 0.5 * (mesh.data[_TARGET][a] + mesh.data[_TARGET][b])
    candidate = (length < COLLAPSE_RATIO * target) | _needle_edges(length, c)
    # The two opposite vertices must keep valence >= 3, and (link condition, below) be the
    # only neighbours the edge's ends share: otherwise the collapse pinches the surface.
    candidate &= (c.valence[c.opposite] > 3).all(dim=1) & (V > 4)
    idx = torch.nonzero(candidate).squeeze(1)
    neighbours = _padded_groups(c.edges.reshape(-1), c.edges.flip(1).reshape(-1), V)
    na, nb = neighbours[a[idx]], neighbours[b[idx]]
    common = ((na[:, :, None] == nb[:, None, :]) & (na[:, :, None] >= 0)).sum(dim=(1, 2))
    idx = idx[common == 2]
    if len(idx) == 0:
        return 0
    star = _padded_groups(f.reshape(-1), torch.arange(3 * len(f), device=f.device) // 3, V)
    idx = idx[_collapse_keeps_shape(mesh, c, star, idx, target[idx])]
    if len(idx) == 0:
        return 0
    around = star[c.edges[idx]].reshape(len(idx), -1)  # faces around either end, -1 padded
    touched = torch.where(around[:, :, None] >= 0, f[around.clamp_min(0)], -1).reshape(
        len(idx), -1)
    chosen = idx[_independent(_rank(length[idx] / target[idx]), touched, V)]
    _merge_pairs(mesh, c.edges[chosen])
    return len(chosen)


def _needle_edges(length: torch.Tensor, c: Connectivity) -> torch.Tensor:
    """(E,) bool: the shortest edge of each face much shorter than that face's longest."""
    side = length[c.face_edges]  # (F, 3)
    shortest = side.argmin(dim=1)
    needle = side.amin(dim=1) < NEEDLE_RATIO * side.amax(dim=1)
    out = torch.zeros_like(length, dtype=torch.bool)
    out[c.face_edges[needle, shortest[needle]]] = True
    return out


def _collapse_keeps_shape(mesh: _Mesh, c: Connectivity, star: torch.Tensor, idx: torch.Tensor,
                          target: torch.Tensor) -> torch.Tensor:
    """(C,) bool: collapsing edges idx to their midpoints folds no face, makes none degenerate
    and makes no edge longer than the split threshold. star: (V, D) faces around each vertex."""
    v, f = mesh.vertices, mesh.faces
    ends = c.edges[idx]
    mid = v[ends].mean(dim=1)  # (C, 3)
    around = star[ends].reshape(len(idx), -1)  # (C, K) faces, -1 padded
    kept = (around >= 0) & (around != c.edge_faces[idx, :1]) & (around != c.edge_faces[idx, 1:])
    corners = f[around.clamp_min(0)]  # (C, K, 3)
    moved = (corners == ends[:, None, :1]) | (corners == ends[:, None, 1:])  # (C, K, 3)
    old = v[corners]
    new = torch.where(moved[..., None], mid[:, None, None, :], old)
    n_old, _ = _face_geometry(old)
    n_new, sine = _face_geometry(new)
    turned = (n_old * n_new).sum(-1) <= MAX_FOLD_COS * n_old.norm(dim=-1) * n_new.norm(dim=-1)
    long_side = ((new.roll(-1, dims=-2) - new).norm(dim=-1).amax(dim=-1)
                 > SPLIT_RATIO * target[:, None])
    bad = kept & (turned | (sine < MIN_SINE) | long_side)
    return ~bad.any(dim=1)


def _merge_pairs(mesh: _Mesh, pairs: torch.Tensor) -> None:
    """Merge each pair (K, 2) of vertices into the first at their mean; drop emptied faces."""
    V = mesh.vertices.shape[0]
    keep, gone = pairs[:, 0], pairs[:, 1]
    mesh.vertices[keep] = mesh.vertices[pairs].mean(dim=1)
    for name, value in mesh.mean_of(pairs).items():
        mesh.data[name][keep] = value
    target = torch.arange(V, device=pairs.device)
    target[gone] = keep
    faces = target[mesh.faces]
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (
        faces[:, 2] == faces[:, 0])
    alive = torch.ones(V, dtype=torch.bool, device=pairs.device)
    alive[gone] = False
    new_index = torch.cumsum(alive.long(), 0) - 1
    mesh.faces = new_index[faces[~repeated]]
    mesh.vertices = mesh.vertices[alive]
    mesh.data = {k: x[alive] for k, x in mesh.data.items()}


def _split(mesh: _Mesh, max_faces: int) -> int:
    """Split edges longer than SPLIT_RATIO x target at their midpoints; returns the count."""
    v, f = mesh.vertices, mesh.faces
    V = v.shape[0]
    c = connectivity(f, V)
    a, b = c.edges[:, 0], c.edges[:, 1]
    ratio = (v[a] - v[b]).norm(dim=1) / (0.5 * (mesh.data[_TARGET][a] + mesh.data[_TARGET][b]))
    idx = torch.nonzero(ratio > SPLIT_RATIO).squeeze(1)
    room = max(0, (max_faces - len(f)) // 2)  # each split adds two faces
    if len(idx) > room:
        idx = idx[torch.argsort(-ratio[idx], stable=True)[:room]]
        idx = torch.sort(idx).values
    if len(idx) == 0:
        return 0
    new_vertex = torch.full((len(c.edges),), -1, dtype=torch.long, device=f.device)
    new_vertex[idx] = V + torch.arange(len(idx), device=f.device)
    side = new_vertex[c.face_edges]  # (F, 3): the vertex on side k, or -1
    pairs = c.edges[idx]
    mesh.vertices = torch.cat([v, v[pairs].mean(dim=1)])
    mesh.data = {k: torch.cat([mesh.data[k], x]) for k, x in mesh.mean_of(pairs).items()}
    mesh.faces = _subdivide_faces(f, side, mesh.vertices)
    return len(idx)


def _subdivide_faces(faces: torch.Tensor, side: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Faces (F, 3) with new vertices on some sides (F, 3; -1 = none) -> the finer faces.

    Each face is rotated so that its split sides come first (one split: side 0; two: sides
    0 and 1), then cut by the pattern for its count; a two-split face cuts its remaining
    quadrilateral along the shorter diagonal.
    """
    split = side >= 0
    count = split.sum(dim=1)
    first = split.long().argmax(dim=1)
    unsplit = (~split).long().argmax(dim=1)
    rot = torch.where(count == 2, (unsplit + 1) % 3, torch.where(count == 1, first, 0))
    order = (torch.arange(3, device=faces.device)[None] + rot[:, None]) % 3
    p = torch.gather(faces, 1, order)  # p0 p1 p2
    s = torch.gather(side, 1, order)  # s0 on p0-p1, s1 on p1-p2, s2 on p2-p0
    p0, p1, p2, s0, s1, s2 = p[:, 0], p[:, 1], p[:, 2], s[:, 0], s[:, 1], s[:, 2]
    out = [faces[count == 0]]
    one = count == 1
    out += [torch.stack([p0, s0, p2], 1)[one], torch.stack([s0, p1, p2], 1)[one]]
    two = count == 2
    out.append(torch.stack([s0, p1, s1], 1)[two])
    short = (v[p0] - v[s1.clamp_min(0)]).norm(dim=1) <= (v[s0.clamp_min(0)] - v[p2]).norm(dim=1)
    out += [torch.stack([p0, s0, s1], 1)[two & short], torch.stack([p0, s1, p2], 1)[two & short]]
    out += [torch.stack([p0, s0, p2], 1)[two & ~short], torch.stack([s0, s1, p2], 1)[two & ~short]]
    three = count == 3
    out += [torch.stack(t, 1)[three] for t in
            ((p0, s0, s2), (s0, p1, s1), (s2, s1, p2), (s0, s1, s2))]
    return torch.cat(out)


def _flip(mesh: _Mesh) -> int:
    """Flip edges where valence and triangle shape improve together; returns the count.

    The two faces (a, b, c) and (b, a, d) become (a, d, c) and (b, c, d). A flip must lower
    sum((valence - 6)^2) - FLIP_ANGLE_WEIGHT * (smallest angle of the pair), join faces
    that are nearly coplanar and give new faces that stay near their plane (so the shape
    does not change and nothing folds), and the new edge c-d must not exist already.
    """
    v, f = mesh.vertices, mesh.faces
    V = v.shape[0]
    c = connectivity(f, V)
    a, b = c.edges[:, 0], c.edges[:, 1]
    o1, o2 = c.opposite[:, 0], c.opposite[:, 1]  # opposite in the a->b face, the b->a face
    old = v[f[c.edge_faces]]  # (E, 2, 3, 3)
    n_old, _ = _face_geometry(old)
    unit = n_old / n_old.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    planar = (unit[:, 0] * unit[:, 1]).sum(-1) > FLIP_MAX_DIHEDRAL_COS
    new = v[torch.stack([torch.stack([a, o2, o1], 1), torch.stack([b, o1, o2], 1)], 1)]
    n_new, sine = _face_geometry(new)
    ref = torch.nn.functional.normalize(unit.sum(dim=1, keepdim=True), dim=-1)
    new_unit = n_new / n_new.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    # Both new faces must lie close to the old pair's plane: no fold, no standing face.
    same_side = ((new_unit * ref).sum(-1) > FLIP_MAX_DIHEDRAL_COS).all(dim=1)
    same_side &= (sine > MIN_SINE).all(dim=1)
    val = c.valence.to(v.dtype)
    d_valence = (13 - 2 * val[a]) + (13 - 2 * val[b]) + (2 * val[o1] - 11) + (2 * val[o2] - 11)
    d_angle = _min_angle(new).amin(dim=1) - _min_angle(old).amin(dim=1)
    gain = d_valence - FLIP_ANGLE_WEIGHT * d_angle
    keys = c.edges[:, 0] * V + c.edges[:, 1]
    exists = torch.isin(torch.minimum(o1, o2) * V + torch.maximum(o1, o2), keys)
    ok = (gain < -1e-6) & planar & same_side & ~exists & (c.valence[a] > 3) & (c.valence[b] > 3)
    idx = torch.nonzero(ok).squeeze(1)
    if len(idx) == 0:
        return 0
    touched = torch.stack([a, b, o1, o2], 1)[idx]
    idx = idx[_independent(_rank(gain[idx]), touched, V)]
    faces = f.clone()
    faces[c.edge_faces[idx, 0]] = torch.stack([a[idx], o2[idx], o1[idx]], 1)
    faces[c.edge_faces[idx, 1]] = torch.stack([b[idx], o1[idx], o2[idx]], 1)
    mesh.faces = faces
    return len(idx)


def tangential_relaxation(vertices: torch.Tensor, faces: torch.Tensor,
                          weight: float = 0.5) -> torch.Tensor:
    """Move each vertex `weight` of the way toward its neighbours' mean, in its tangent plane.

    Evens out triangle shapes (Botsch-Kobbelt's relaxation step) while leaving the surface
    where it is to first order. vertices (V, 3) float, faces (F, 3) int64 -> (V, 3).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the relaxation weight must be in [0, 1], got {weight}")
    v = vertices.detach()
    normal = vertex_normals(v, faces)
    move = neighbour_mean(v, faces) - v
    move -= (move * normal).sum(dim=1, keepdim=True) * normal
    return v + weight * move


def neighbour_mean(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Each vertex's neighbours' mean position (V, 3) on a closed mesh (an isolated vertex:
    the origin). vertices (V, 3) float, faces (F, 3) int64."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # each edge both ways
    total = torch.zeros_like(vertices).index_add_(0, e[:, 0], vertices[e[:, 1]])
    count = torch.bincount(e[:, 0], minlength=len(vertices)).clamp_min(1).to(vertices.dtype)
    return total / count[:, None]


def untangle(vertices: torch.Tensor, faces: torch.Tensor,
             rounds: int = UNTANGLE_ROUNDS) -> tuple[torch.Tensor, int]:
    """Smooth the surface where it passes through itself; (vertices (V, 3), crossings left).

    Each round finds the pairs of triangles that cross (`quality.crossing_pairs`) and moves
    their vertices, and UNTANGLE_RINGS rings around them, UNTANGLE_STEPS times half way to
    their neighbours' mean (umbrella smoothing): a fold or pit opens, a collapsed strand
    shrinks. Elsewhere the surface does not move. vertices (V, 3) float, faces (F, 3) int64.
    """
    v = vertices.detach().clone()
    faces_np = faces.cpu().numpy()
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # each edge both ways
    for _ in range(rounds):
        pairs = crossing_pairs(v.cpu().numpy(), faces_np)
        if len(pairs) == 0:
            return v, 0
        region = torch.zeros(len(v), dtype=torch.bool, device=v.device)
        region[torch.as_tensor(faces_np[pairs.reshape(-1)].reshape(-1), device=v.device)] = True
        for _ in range(UNTANGLE_RINGS):
            region[e[region[e[:, 0]], 1]] = True
        for _ in range(UNTANGLE_STEPS):
            mean = neighbour_mean(v, faces)
            v[region] += 0.5 * (mean[region] - v[region])
    return v, len(crossing_pairs(v.cpu().numpy(), faces_np))


def vertex_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    """The optimiser's per-vertex state of `param` (V, ...): {name: (V, ...) tensor}.

    Entries shaped like the parameter (Adam's "exp_avg", "exp_avg_sq") are per-vertex;
    scalars ("step") are left out and kept by `replace_parameter`.
    """
    state = optimizer.state.get(param, {})
    return {k: x for k, x in state.items()
            if torch.is_tensor(x) and x.dim() > 0 and x.shape == param.shape}


def replace_parameter(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor,
                      carried: dict[str, torch.Tensor]) -> None:
    """Swap `old` for `new` (V', ...) in the optimiser, with per-vertex state `carried`.

    `carried` is `vertex_state` after remeshing (RemeshResult.attributes); the other
    state entries (the step count) are kept as they were.
    """
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, {})
                scalars = {k: x for k, x in state.items() if k not in carried}
                optimizer.state[new] = {**scalars, **carried}
                return
    raise ValueError("the parameter to replace is not one of the optimiser's parameters")


def edge_length_for_faces(area: float, faces: int) -> float:
    """Edge length at which equilateral triangles tile `area` with `faces` faces.

    A face budget as a length: an edge target below it would exceed the budget.
    """
    if not (area > 0 and faces > 0):
        raise ValueError(f"area and face count must be positive, got {area} and {faces}")
    return float(np.sqrt(4.0 * area / (np.sqrt(3.0) * faces)))


def pixel_target_lengths(vertices: np.ndarray, cameras: list[CameraMatrices],
                         pixels: float) -> np.ndarray:
    """Scene length (V,) float64 that spans `pixels` pixels at each vertex.

    vertices: (V, 3) world positions. For each vertex, the finest view that sees it (in
    front of the camera and inside its image) decides: a perspective camera maps a length
    l at depth z to l * f / z pixels (f the mean of fx, fy), an orthographic one to l * f.
    A vertex no camera sees gets the largest length of the seen ones (nothing shows its
    detail). Raises ValueError when no camera sees any vertex.
    """
    if not (np.isfinite(pixels) and pixels > 0):
        raise ValueError(f"the target edge length in pixels must be positive, got {pixels}")
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    best = np.full(len(v), np.inf)
    for cam in cameras:
        x = v @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
        K = cam.intrinsics
        focal = 0.5 * (K[0, 0] + K[1, 1])
        if cam.orthographic:
            depth, uv = np.ones(len(v)), x[:, :2]
            front = np.ones(len(v), dtype=bool)
        else:
            depth = x[:, 2]
            front = depth > 1e-9
            uv = x[:, :2] / np.where(front, depth, 1.0)[:, None]
        u = K[0, 0] * uv[:, 0] + K[0, 2]
        w = K[1, 1] * uv[:, 1] + K[1, 2]
        inside = front & (u >= 0) & (u <= cam.width) & (w >= 0) & (w <= cam.height)
        length = pixels * depth / focal
        best = np.where(inside, np.minimum(best, length), best)
    seen = np.isfinite(best)
    if not seen.any():
        raise ValueError("no camera sees the mesh: check the cameras and the mesh's position")
    return np.where(seen, best, best[seen].max())
