"""The renderer's public API: mesh + cameras -> soft RGBA images, differentiable.

    images = render(vertices, faces, cameras, colors, RenderSettings(sigma=0.5))

Everything up to screen space (validation, lighting, projection, face culling) is
plain torch here (`backend.render.screen_space`) and shared by both implementations;
the soft rasterization itself runs either on the CPU (`backend.render.raster_cpu`,
loops compiled by Numba) or on an NVIDIA GPU (`backend.render.raster_cuda`, CUDA
kernels), both with the same analytic backward and the same numbers.

Units: pixel coordinates throughout. ``sigma`` is in squared pixels, so the same
value gives the same edge softness in pixels at any resolution: a pixel centre at
distance d (pixels) outside a triangle gets D = sigmoid(-d^2 / sigma).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.camera import CameraMatrices
from ..core.options import DEVICES
from .raster_cpu import rasterize_cpu
from .raster_cuda import rasterize_cuda
from .screen_space import ScreenFaces, gather_faces, screen_faces
from .settings import Lighting, RenderSettings

# The fit's devices, plus the original all-faces CUDA loop (the benchmark's baseline).
BACKENDS = (*DEVICES, "cuda-naive")


@dataclass
class Cameras:
    """A batch of B cameras sharing one image size.

    intrinsics: (B, 3, 3) float, K in pixels.
    world_to_camera: (B, 4, 4) float, world -> camera (x right, y down, z forward).
    orthographic: (B,) bool.
    width, height: image size in pixels.
    """

    intrinsics: torch.Tensor
    world_to_camera: torch.Tensor
    orthographic: torch.Tensor
    width: int
    height: int
    names: list[str] = field(default_factory=list)

    @staticmethod
    def from_matrices(
        cams: Sequence[CameraMatrices], dtype=torch.float32, device="cpu"
    ) -> Cameras:
        """Batch `CameraMatrices` of one image size (see `backend.core.camera`)."""
        if not cams:
            raise ValueError("no cameras given")
        sizes = {(c.width, c.height) for c in cams}
        if len(sizes) != 1:
            raise ValueError(f"cameras in one batch must share an image size, got {sorted(sizes)}")
        (width, height), = sizes
        return Cameras(
            intrinsics=torch.tensor(np.stack([c.intrinsics for c in cams]), dtype=dtype,
                                    device=device),
            world_to_camera=torch.tensor(np.stack([c.world_to_camera for c in cams]),
                                         dtype=dtype, device=device),
            orthographic=torch.tensor([c.orthographic for c in cams], device=device),
            width=width,
            height=height,
        )

    def __len__(self) -> int:
        return self.intrinsics.shape[0]

    def to(self, device=None, dtype=None) -> Cameras:
        return Cameras(
            self.intrinsics.to(device=device, dtype=dtype),
            self.world_to_camera.to(device=device, dtype=dtype),
            self.orthographic.to(device=device),
            self.width,
            self.height,
            list(self.names),
        )

    def select(self, rows: slice | Sequence[int]) -> Cameras:
        """The cameras at ``rows`` (a slice, or batch indices in the order wanted)."""
        if isinstance(rows, slice):
            names = self.names[rows]
        else:
            names = [self.names[r] for r in rows] if self.names else []
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.intrinsics.device)
        return Cameras(self.intrinsics[rows], self.world_to_camera[rows], self.orthographic[rows],
                       self.width, self.height, names)


def render(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    colors: torch.Tensor | None = None,
    settings: RenderSettings | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-rasterize a mesh from every camera.

    vertices: (V, 3) float32/float64, world space.
    faces: (F, 3) integer vertex indices.
    cameras: a `Cameras` batch of B cameras of size H x W.
    colors: optional (V, 3) per-vertex RGB; None renders white.
    backend: "auto" (CUDA when the tensors are on a GPU, else CPU), "cpu", "cuda"
        (tiled/binned kernels) or "cuda-naive" (every pixel visits every face).
    Returns (B, H, W, 4) RGBA of the vertices' dtype; alpha is the soft silhouette.
    Differentiable w.r.t. vertices and colors.
    """
    settings = settings or RenderSettings()
    if colors is None:
        colors = torch.ones_like(vertices)
    return _rasterize(vertices, faces, cameras, colors, settings, backend)


def render_silhouette(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    settings: RenderSettings | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Only the soft silhouettes, (B, H, W), skipping all colour work (faster)."""
    settings = settings or RenderSettings()
    return _rasterize(vertices, faces, cameras, None, settings, backend)[..., 0]


def _rasterize(vertices, faces, cameras, colors, settings, backend):
    faces = validate_mesh(vertices, faces, colors)
    impl = _choose_backend(backend, vertices)
    B, H, W = len(cameras), cameras.height, cameras.width
    dtype, device = vertices.dtype, vertices.device
    channels = 1 if colors is None else 4
    if faces.shape[0] == 0:
        return _background(B, H, W, channels, settings, dtype, device)

    cameras = cameras.to(device=device, dtype=dtype)
    face_screen, face_valid = project_faces(vertices, faces, cameras, settings)
    face_colors = None
    if colors is not None:
        face_colors = gather_faces(colors, faces)  # (F, 3, 3)
        if settings.lighting is not None:
            face_colors = face_colors * face_light(vertices, faces, settings.lighting)[:, None, :]
        face_colors = face_colors.unsqueeze(0).expand(B, -1, -1, -1)

    if impl == "cpu":
        return rasterize_cpu(face_screen, face_colors, face_valid, cameras.orthographic,
                             W, H, settings)
    return rasterize_cuda(face_screen, face_colors, face_valid, cameras.orthographic, W, H,
                          settings, binned=impl == "cuda")


def _background(B, H, W, channels, settings, dtype, device):
    out = torch.zeros(B, H, W, channels, dtype=dtype, device=device)
    if channels == 4:
        out[..., :3] = torch.tensor(settings.background_color, dtype=dtype, device=device)
    return out


def _choose_backend(backend: str, vertices: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cuda" if vertices.is_cuda else "cpu"
    if backend.startswith("cuda") and not vertices.is_cuda:
        raise ValueError(f"backend {backend!r} needs the mesh on a CUDA device (vertices.cuda())")
    if backend == "cpu" and vertices.is_cuda:
        raise ValueError("backend 'cpu' needs the mesh on the CPU (vertices.cpu())")
    return backend


def validate_mesh(vertices: torch.Tensor, faces: torch.Tensor, colors=None) -> torch.Tensor:
    """Check shapes, finiteness and index ranges; return faces as int64.

    Raises ValueError naming the problem and how to fix it.
    """
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {tuple(vertices.shape)}")
    if not vertices.is_floating_point():
        raise ValueError("vertices must be a floating-point tensor (float32 or float64)")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(
            f"faces must have shape (F, 3) (triangles), got {tuple(faces.shape)}: "
            "triangulate the mesh first"
        )
    if faces.dtype.is_floating_point or faces.dtype == torch.bool:
        raise ValueError(f"faces must hold integer vertex indices, got {faces.dtype}")
    if not torch.isfinite(vertices).all():
        bad = (~torch.isfinite(vertices).all(dim=1)).nonzero()[:5, 0].tolist()
        raise ValueError(f"vertices contain NaN or infinite values (first bad vertices: {bad})")
    faces = faces.to(device=vertices.device, dtype=torch.long)
    if faces.numel() and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise ValueError(
            f"face indices must lie in [0, {vertices.shape[0] - 1}] for {vertices.shape[0]} "
            f"vertices, got the range [{int(faces.min())}, {int(faces.max())}]"
        )
    if colors is not None:
        if colors.shape != vertices.shape:
            raise ValueError(
                f"colors must have shape (V, 3) = {tuple(vertices.shape)}, got "
                f"{tuple(colors.shape)}"
            )
        if not torch.isfinite(colors).all():
            raise ValueError("colors contain NaN or infinite values")
    return faces


def project_points(points: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """Project world points into every camera.

    points: (N, 3) world space. Returns (B, N, 3): pixel u, pixel v and view depth z
    (z > 0 in front of the camera). Points at z <= 0 of a perspective camera get
    finite but meaningless u, v (callers skip them through `project_faces`' validity).
    """
    rot = cameras.world_to_camera[:, :3, :3]
    trans = cameras.world_to_camera[:, :3, 3]
    cam = torch.einsum("bij,nj->bni", rot, points) + trans[:, None, :]
    z = cam[..., 2]
    ortho = cameras.orthographic[:, None]
    safe_z = torch.where(z.abs() > 1e-12, z, torch.ones_like(z))
    divisor = torch.where(ortho, torch.ones_like(z), safe_z)
    xy = cam[..., :2] / divisor[..., None]
    k = cameras.intrinsics
    u = k[:, None, 0, 0] * xy[..., 0] + k[:, None, 0, 1] * xy[..., 1] + k[:, None, 0, 2]
    v = k[:, None, 1, 1] * xy[..., 1] + k[:, None, 1, 2]
    return torch.stack([u, v, z], dim=-1)


def project_faces(
    vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, settings: RenderSettings
) -> ScreenFaces:
    """Screen-space faces and which of them each camera rasterizes (see `ScreenFaces`)."""
    return screen_faces(project_points(vertices, cameras), faces, settings)


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit normals (F, 3) of counter-clockwise faces; zero for degenerate faces."""
    v = gather_faces(vertices, faces)
    n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    length = n.norm(dim=-1, keepdim=True)
    return n / length.clamp_min(1e-12)


def face_light(vertices: torch.Tensor, faces: torch.Tensor, lighting: Lighting) -> torch.Tensor:
    """Per-face RGB light intensity (F, 3) of SoftRas' ambient + directional model."""
    dtype, device = vertices.dtype, vertices.device
    direction = torch.tensor(lighting.direction, dtype=dtype, device=device)
    direction = direction / direction.norm().clamp_min(1e-12)
    cosine = (face_normals(vertices, faces) @ direction).clamp_min(0.0)
    ambient = lighting.ambient * torch.tensor(lighting.ambient_color, dtype=dtype, device=device)
    directional = lighting.directional * torch.tensor(lighting.directional_color, dtype=dtype,
                                                      device=device)
    return ambient + cosine[:, None] * directional
