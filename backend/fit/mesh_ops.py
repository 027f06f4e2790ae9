"""Triangle-mesh helpers for the fitter: connectivity, Laplacian, subdivision, repair.

Meshes are vertices (V, 3) float and faces (F, 3) integer vertex indices, faces
counter-clockwise seen from outside. Connectivity is computed with numpy and scipy (once
per topology); anything the optimiser differentiates through is torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def as_triangles(faces) -> tuple[np.ndarray, int]:
    """Faces as an (F, 3) int64 array; polygons given as lists are fan-triangulated.

    faces: an (F, 3) integer array, an (F, N) integer array of N-gons, or a sequence of
    polygons (each a sequence of >= 3 vertex indices). Returns (triangles, n_split):
    n_split counts the polygons with more than three corners that were split.
    Raises ValueError for polygons with fewer than three corners or non-integer indices.
    """
    if isinstance(faces, np.ndarray) or torch.is_tensor(faces):
        arr = np.asarray(faces.cpu() if torch.is_tensor(faces) else faces)
        if arr.ndim == 2 and arr.shape[0] == 0:
            return np.zeros((0, 3), dtype=np.int64), 0
        if arr.ndim == 2 and arr.dtype != object:
            _check_integer(arr)
            polygons = arr.astype(np.int64)
            if polygons.shape[1] == 3:
                return polygons, 0
            if polygons.shape[1] < 3:
                raise ValueError(
                    f"faces have {polygons.shape[1]} corners each: a face needs at least 3"
                )
            return _fan(polygons), polygons.shape[0]
    triangles, n_split = [], 0
    for i, polygon in enumerate(faces):
        poly = np.asarray(polygon)
        if poly.ndim != 1 or len(poly) < 3:
            raise ValueError(f"face {i} has {poly.size} corners: a face needs at least 3")
        _check_integer(poly)
        triangles.append(_fan(poly.astype(np.int64)[None]))
        n_split += len(poly) > 3
    if not triangles:
        return np.zeros((0, 3), dtype=np.int64), 0
    return np.concatenate(triangles), n_split


def _check_integer(arr: np.ndarray) -> None:
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return
        raise ValueError(f"face indices must be integers, got dtype {arr.dtype}")


def _fan(polygons: np.ndarray) -> np.ndarray:
    """(P, N) polygons -> (P * (N - 2), 3) triangles (0, k, k + 1)."""
    n = polygons.shape[1]
    tris = [polygons[:, [0, k, k + 1]] for k in range(1, n - 1)]
    return np.stack(tris, axis=1).reshape(-1, 3)


def directed_edges(faces: np.ndarray) -> np.ndarray:
    """Every face's three edges in its winding order, (3F, 2) int64: rows [0, F) are the
    edges (a, b), then [F, 2F) the edges (b, c), then [2F, 3F) the edges (c, a)."""
    faces = np.asarray(faces, dtype=np.int64)
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def _undirected(directed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed edges (N, 2) as undirected ones: each with the smaller index first (N, 2),
    its index (N,) among the unique undirected edges, and how many of the N are each of
    those (U,)."""
    key = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return key, inverse.reshape(-1), counts


def edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E, 2) int64, each with the smaller index first, sorted."""
    e = np.sort(directed_edges(faces), axis=1)
    n = int(e.max()) + 1 if len(e) else 1
    key = np.unique(e[:, 0] * n + e[:, 1])  # one integer per edge: 10x faster than axis=0
    return np.stack([key // n, key % n], axis=1)


@dataclass(frozen=True)
class EdgeAdjacency:
    """Interior edges shared by exactly two faces.

    edge: (E, 2) the edge's vertices; opposite: (E, 2) the vertex of each of the two
    faces not on the edge; face_pair: (E, 2) the two faces. All int64 (numpy arrays, or
    torch tensors once moved to the optimiser's device).
    """

    edge: np.ndarray
    opposite: np.ndarray
    face_pair: np.ndarray


def edge_adjacency(faces: np.ndarray) -> EdgeAdjacency:
    """The two faces around every edge that has exactly two (manifold interior edges)."""
    faces = np.asarray(faces, dtype=np.int64)
    F = len(faces)
    opposite = np.concatenate([faces[:, 2], faces[:, 0], faces[:, 1]])
    face_id = np.tile(np.arange(F), 3)
    key, inverse, counts = _undirected(directed_edges(faces))
    keep = counts[inverse] == 2
    order = np.argsort(inverse[keep], kind="stable")
    idx = np.nonzero(keep)[0][order].reshape(-1, 2)
    return EdgeAdjacency(
        edge=key[idx[:, 0]],
        opposite=opposite[idx],
        face_pair=face_id[idx],
    )


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit area-weighted vertex normals (V, 3) of counter-clockwise faces (zero for a
    vertex on no face, or whose faces' normals cancel). vertices (V, 3) float, faces
    (F, 3) int64; meant for use without gradient (the callers hold normals fixed)."""
    p = vertices[faces]
    face_normal = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1)
    normal = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1),
                                                   face_normal.repeat_interleave(3, dim=0))
    return normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-12)


def laplacian(faces: np.ndarray, n_vertices: int, dtype=torch.float32, device="cpu"):
    """Uniform graph Laplacian L = I - D^-1 A as a sparse (V, V) torch COO tensor.

    (L @ x)_i = x_i - mean of x over i's neighbours; zero rows for isolated vertices.
    """
    e = edges(faces)
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    degree = np.bincount(rows, minlength=n_vertices).astype(np.float64)
    values = -1.0 / degree[rows]
    connected = np.nonzero(degree > 0)[0]
    rows = np.concatenate([rows, connected])
    cols = np.concatenate([cols, connected])
    values = np.concatenate([values, np.ones(len(connected))])
    index = torch.tensor(np.stack([rows, cols]), dtype=torch.long, device=device)
    return torch.sparse_coo_tensor(
        index, torch.tensor(values, dtype=dtype, device=device), (n_vertices, n_vertices),
        check_invariants=True,
    ).coalesce()


def icosphere(subdivisions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices (V, 3) float64 on the unit sphere, faces (20 * 4^s, 3) int64."""
    t = (1.0 + 5.0**0.5) / 2.0
    v = np.array(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
        dtype=np.float64,
    )
    f = np.array(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
         [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]],
        dtype=np.int64,
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(subdivisions):
        v, f = subdivide(v, f)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, f


def subdivide(vertices, faces: np.ndarray, attributes=()):
    """Midpoint (1-to-4) subdivision; the surface keeps its shape, closed stays closed.

    vertices: (V, 3) numpy array or torch tensor; faces (F, 3). attributes: extra
    per-vertex arrays/tensors (V, C) (colours) interpolated the same way.
    Returns (vertices (V + E, 3), faces (4F, 3) int64 numpy) and, when attributes are
    given, a third element: the list of subdivided attributes. New vertex V + k is the
    midpoint of `edges(faces)[k]`.
    """
    faces = np.asarray(faces, dtype=np.int64)
    V = len(vertices)
    e = edges(faces)
    key = e[:, 0] * V + e[:, 1]

    def mid(a, b):
        k = np.minimum(a, b) * V + np.maximum(a, b)
        return V + np.searchsorted(key, k)

    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
    new_faces = np.stack(
        [np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1),
         np.stack([ab, bc, ca], 1)], axis=1
    ).reshape(-1, 3)

    def interpolate(x):
        if torch.is_tensor(x):
            ei = torch.as_tensor(e, device=x.device)
            return torch.cat([x, 0.5 * (x[ei[:, 0]] + x[ei[:, 1]])])
        x = np.asarray(x)
        return np.concatenate([x, 0.5 * (x[e[:, 0]] + x[e[:, 1]])])

    if attributes:
        return interpolate(vertices), new_faces, [interpolate(x) for x in attributes]
    return interpolate(vertices), new_faces


@dataclass
class MeshReport:
    """What `check_mesh` found: counts of each kind of defect."""

    boundary_edges: int = 0
    nonmanifold_edges: int = 0
    inconsistent_edges: int = 0  # interior edges whose two faces disagree in orientation
    components: int = 0

    @property
    def closed_manifold(self) -> bool:
        return self.boundary_edges == 0 and self.nonmanifold_edges == 0

    def describe(self) -> list[str]:
        out = []
        if self.boundary_edges:
            out.append(f"{self.boundary_edges} boundary edges (the mesh has holes)")
        if self.nonmanifold_edges:
            out.append(f"{self.nonmanifold_edges} non-manifold edges (shared by > 2 faces)")
        if self.inconsistent_edges:
            out.append(f"{self.inconsistent_edges} edges between faces of opposite orientation")
        return out


def check_mesh(faces: np.ndarray) -> MeshReport:
    """Closedness, manifoldness, orientation consistency and components of a triangle mesh."""
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return MeshReport()
    directed = directed_edges(faces)
    _, inverse, counts = _undirected(directed)
    # A consistently oriented interior edge is used once in each direction.
    forward = (directed[:, 0] < directed[:, 1]).astype(np.int64)
    n_forward = np.bincount(inverse, weights=forward, minlength=len(counts))
    interior = counts == 2
    report = MeshReport(
        boundary_edges=int(np.sum(counts == 1)),
        nonmanifold_edges=int(np.sum(counts > 2)),
        inconsistent_edges=int(np.sum(interior & (n_forward != 1))),
        components=int(len(np.unique(face_components(faces)))),
    )
    return report


def face_components(faces: np.ndarray) -> np.ndarray:
    """Connected-component label (F,) int64 of every face (faces sharing a vertex connect);
    labels are 0, 1, ... in no particular order."""
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return np.zeros(0, dtype=np.int64)
    n = int(faces.max()) + 1
    e = directed_edges(faces)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels[faces[:, 0]].astype(np.int64)


@dataclass
class RepairResult:
    vertices: np.ndarray
    faces: np.ndarray
    messages: list[str] = field(default_factory=list)


def repair_mesh(vertices: np.ndarray, faces: np.ndarray) -> RepairResult:
    """Fix what the fitter cannot work with, and say what was done.

    Removes faces with a repeated corner, duplicate faces and unreferenced vertices,
    and makes the orientation consistent (outward for closed meshes) where the
    surface allows. Defects left in place (holes, non-manifold edges) are reported.
    vertices (V, 3) float; faces (F, 3) int. Returns float64 vertices, int64 faces.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    messages = []
    degenerate = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (
        faces[:, 2] == faces[:, 0]
    )
    if degenerate.any():
        faces = faces[~degenerate]
        messages.append(f"removed {int(degenerate.sum())} faces with a repeated corner")
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    if len(first) < len(faces):
        messages.append(f"removed {len(faces) - len(first)} duplicate faces")
        faces = faces[np.sort(first)]
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    if not used.all():
        remap = np.cumsum(used) - 1
        faces = remap[faces]
        vertices = vertices[used]
        messages.append(f"removed {int((~used).sum())} vertices used by no face")
    flipped = orient_faces(vertices, faces)
    if flipped is not None and flipped.any():
        faces = faces.copy()
        faces[flipped] = faces[flipped][:, ::-1]
        messages.append(f"flipped {int(flipped.sum())} faces to make the orientation consistent")
    report = check_mesh(faces)
    left = report.describe()
    if left:
        messages.append("left as is: " + ", ".join(left))
    return RepairResult(vertices, faces, messages)


def orient_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray | None:
    """Which faces to flip (F,) bool for a consistent, outward orientation.

    Breadth-first over manifold edges from one face per component; a closed component
    with negative signed volume is flipped whole. Returns None when the surface is not
    orientable (a Moebius-like strip), in which case nothing should be flipped.
    """
    faces = np.asarray(faces, dtype=np.int64)
    F = len(faces)
    if F == 0:
        return np.zeros(0, dtype=bool)
    adj = edge_adjacency(faces)
    # same[k]: the two faces of edge k traverse it in the same direction (one must flip).
    fa, fb = adj.face_pair[:, 0], adj.face_pair[:, 1]
    e0, e1 = adj.edge[:, 0], adj.edge[:, 1]

    def direction(face_idx):
        f = faces[face_idx]
        pos0 = np.argmax(f == e0[:, None], axis=1)
        return f[np.arange(len(f)), (pos0 + 1) % 3] == e1

    same = direction(fa) == direction(fb)
    neighbours = [[] for _ in range(F)]
    for a, b, s in zip(fa.tolist(), fb.tolist(), same.tolist(), strict=True):
        neighbours[a].append((b, s))
        neighbours[b].append((a, s))
    flip = np.zeros(F, dtype=bool)
    seen = np.zeros(F, dtype=bool)
    labels = np.full(F, -1)
    component = 0
    for start in range(F):
        if seen[start]:
            continue
        seen[start] = True
        labels[start] = component
        stack = [start]
        while stack:
            f = stack.pop()
            for g, s in neighbours[f]:
                want = flip[f] ^ s
                if seen[g]:
                    if flip[g] != want:
                        return None
                    continue
                seen[g] = True
                flip[g] = want
                labels[g] = component
                stack.append(g)
        component += 1
    oriented = faces.copy()
    oriented[flip] = oriented[flip][:, ::-1]
    tri = vertices[oriented]
    signed = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2]))
    volume = np.bincount(labels, weights=signed, minlength=component)
    closed = np.ones(component, dtype=bool)
    _, inverse, counts = _undirected(directed_edges(faces))
    open_edge = counts[inverse] != 2
    # Only closed components have an inside; open ones keep the orientation found above.
    closed[np.unique(np.tile(labels, 3)[open_edge])] = False
    flip ^= (closed & (volume < 0))[labels]
    return flip


def signed_volume(vertices, faces) -> float:
    """Signed volume enclosed by a closed, consistently oriented mesh (positive = outward)."""
    v = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    return float(np.einsum("ij,ij->", v[:, 0], np.cross(v[:, 1], v[:, 2])) / 6.0)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Areas (F,) of triangles."""
    v = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    return 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)


def sample_surface(vertices, faces, count: int, seed: int = 0) -> np.ndarray:
    """`count` points (count, 3) float64 uniformly distributed over the mesh's area."""
    v = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    area = face_areas(v, faces)
    if area.sum() <= 0:
        raise ValueError("the mesh has no area to sample points from")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=count, p=area / area.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    return np.einsum("nk,nkj->nj", w, v[faces[chosen]])
