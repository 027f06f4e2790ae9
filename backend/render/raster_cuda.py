"""Soft rasterization on an NVIDIA GPU: kernels/soft_raster.cu through CuPy.

The coarse pass (which faces may touch which tile of `binning.tile_size_for` pixels,
`backend.render.binning`) runs as a few torch ops; the fine pass (per pixel, over its
tile's faces) and its analytic backward are the CUDA kernels, wrapped in a
torch.autograd.Function. Each kernel takes one argument, the struct SoftRasParams<T>,
mirrored here by `PARAMS_FIELDS` and filled by `pack_params` with the tensors'
addresses (no copies) and the settings; the kernels run on torch's current stream.
The compiled module is cached in-process here and across processes by CuPy's kernel
cache (CUPY_CACHE_DIR).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .binning import bin_faces, tile_size_for
from .settings import RenderSettings

KERNEL_SOURCE = Path(__file__).resolve().parent.parent.parent / "kernels" / "soft_raster.cu"
# NVRTC options, shared with the test that compiles the kernels as CuPy does.
NVRTC_OPTIONS = ("--std=c++14",)
_FLOAT_TYPES = {torch.float32: ("f32", np.float32), torch.float64: ("f64", np.float64)}

# SoftRasParams<T> of kernels/soft_raster.cu, field for field in declaration order:
# "T" is the launch's float type, "*" marks a pointer to elements of that kind.
# tests/test_kernels.py checks this layout against the struct as compiled.
PARAMS_FIELDS = (
    ("face_screen", "T*"),
    ("face_colors", "T*"),
    ("orthographic", "uint8*"),
    ("tile_offsets", "int32*"),
    ("tile_faces", "int32*"),
    ("rgba", "T*"),
    ("aux", "T*"),
    ("grad_rgba", "T*"),
    ("grad_screen", "T*"),
    ("grad_colors", "T*"),
    ("sigma", "T"),
    ("d2_cutoff", "T"),
    ("gamma", "T"),
    ("eps", "T"),
    ("z_near", "T"),
    ("z_far", "T"),
    ("background", "T[3]"),
    ("face_count", "int32"),
    ("height", "int32"),
    ("width", "int32"),
    ("tile", "int32"),
    ("tiles_x", "int32"),
    ("tiles", "int32"),
    ("channels", "int32"),
)


def cuda_available() -> tuple[bool, str]:
    """Whether the CUDA path can run here, and if not, why (for error messages)."""
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device (CPU build of torch, or no NVIDIA driver)"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False, "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    return True, ""


@functools.cache
def load_kernels():
    """The compiled kernels (a CuPy RawModule): compiled, or loaded from CuPy's
    on-disk cache, once per process."""
    import cupy

    return cupy.RawModule(code=KERNEL_SOURCE.read_text(), options=NVRTC_OPTIONS)


def _float_type(dtype: torch.dtype) -> tuple[str, type]:
    """The entry points' suffix and numpy's scalar type for a float type."""
    if dtype not in _FLOAT_TYPES:
        raise ValueError(f"the CUDA rasterizer takes float32 or float64 tensors, got {dtype}")
    return _FLOAT_TYPES[dtype]


def kernel_name(name: str, dtype: torch.dtype) -> str:
    """The entry point of kernel ``name`` for float type ``dtype``, e.g. name_f32."""
    return f"{name}_{_float_type(dtype)[0]}"


@functools.cache
def params_dtype(dtype: torch.dtype) -> np.dtype:
    """SoftRasParams<T> as a numpy structured dtype with C layout (``align=True``),
    T float for torch.float32 and double for torch.float64; pointers are uintp."""
    scalar = _float_type(dtype)[1]
    formats = {"T": scalar, "T[3]": (scalar, (3,)), "int32": np.int32}
    return np.dtype(
        [(name, np.uintp if kind.endswith("*") else formats[kind]) for name, kind in PARAMS_FIELDS],
        align=True,
    )


@dataclass(frozen=True)
class KernelLaunch:
    """Where and how the kernels run: device, float type, grid and block (x, y, z)."""

    device: torch.device
    dtype: torch.dtype
    grid: tuple[int, int, int]
    block: tuple[int, int, int]


def pack_params(launch: KernelLaunch, values: dict) -> np.ndarray:
    """The kernels' one argument: a (1,) array of `params_dtype(launch.dtype)`.

    values: every field of `PARAMS_FIELDS` by name. Pointer fields take a contiguous
    tensor of the field's element type on the launch's device, whose address is
    stored (it must stay alive until the kernel has run), or None for a null pointer
    the kernel does not follow; the other fields take numbers.
    """
    kinds = dict(PARAMS_FIELDS)
    if values.keys() != kinds.keys():
        raise ValueError(f"kernel parameters: missing {sorted(kinds.keys() - values.keys())}, "
                         f"unknown {sorted(values.keys() - kinds.keys())}")
    params = np.zeros(1, dtype=params_dtype(launch.dtype))
    for name, value in values.items():
        if kinds[name].endswith("*"):
            params[name] = 0 if value is None else _address(name, value, kinds[name], launch)
        else:
            params[name] = value
    return params


def _address(name: str, tensor: torch.Tensor, kind: str, launch: KernelLaunch) -> int:
    element = launch.dtype if kind == "T*" else getattr(torch, kind[:-1])
    if tensor.dtype != element or tensor.device != launch.device or not tensor.is_contiguous():
        raise ValueError(
            f"kernel parameter {name} needs a contiguous {element} tensor on {launch.device}, "
            f"got {tensor.dtype} on {tensor.device} (contiguous: {tensor.is_contiguous()})")
    return tensor.data_ptr()


def run_kernel(name: str, launch: KernelLaunch, params: np.ndarray) -> None:
    """Launch kernel ``name`` on torch's current stream of the launch's device.

    params: `pack_params`'s (1,) array; CuPy passes a one-element numpy array to
    the kernel by value, and the driver copies it at the launch.
    """
    import cupy

    kernel = load_kernels().get_function(kernel_name(name, launch.dtype))
    with cupy.cuda.Device(launch.device.index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(launch.device).cuda_stream)
        with stream:
            kernel(launch.grid, launch.block, (params,))


def build_face_lists(face_screen, face_valid, margin, width, height, binned):
    """Per-tile face lists for the fine pass: (tile, tiles_x, tiles, offsets, faces).

    Binned: tiles of `tile_size_for` pixels listing the faces whose cutoff-expanded box
    touches them. Naive: one tile covering the image that lists every valid face.
    """
    if binned:
        tile = tile_size_for(width, height)
        offsets, faces = bin_faces(face_screen, face_valid, margin, width, height, tile)
        tiles_x = -(-width // tile)
        return tile, tiles_x, tiles_x * -(-height // tile), offsets, faces
    B, F = face_valid.shape
    tile = max(width, height)
    counts = face_valid.sum(dim=1)
    offsets = torch.zeros(B + 1, dtype=torch.int64, device=face_valid.device)
    offsets[1:] = torch.cumsum(counts, 0)
    faces = face_valid.nonzero()[:, 1].to(torch.int32)
    return tile, 1, 1, offsets.to(torch.int32), faces


def kernel_settings(settings: RenderSettings) -> dict:
    """The SoftRasParams values that come from a `RenderSettings`."""
    return {
        "sigma": settings.sigma,
        "d2_cutoff": settings.cutoff_distance2,
        "gamma": settings.gamma,
        "eps": settings.background_depth,
        "z_near": settings.near,
        "z_far": settings.far,
        "background": settings.background_color,
    }


# The arrays the forward pass reads and writes (saved for the backward pass), and the
# backward pass's own.
_ARRAYS = ("face_screen", "face_colors", "orthographic", "tile_offsets", "tile_faces", "rgba",
           "aux")
_GRADIENTS = ("grad_rgba", "grad_screen", "grad_colors")


class SoftRasterizeCuda(torch.autograd.Function):
    """face_screen (B, F, 3, 3), face_colors (B, F, 3, 3) or None -> (B, H, W, C)."""

    @staticmethod
    def forward(ctx, face_screen, face_colors, face_valid, orthographic, width, height,
                settings, binned):
        B, F = face_valid.shape
        dtype, device = face_screen.dtype, face_screen.device
        with_colors = face_colors is not None
        channels = 4 if with_colors else 1
        tile, tiles_x, tiles, offsets, faces = build_face_lists(
            face_screen, face_valid, settings.cutoff_distance, width, height, binned)
        arrays = {
            "face_screen": face_screen.contiguous(),
            "face_colors": face_colors.contiguous() if with_colors else None,
            "orthographic": orthographic.to(device=device, dtype=torch.uint8).contiguous(),
            "tile_offsets": offsets,
            "tile_faces": faces,
            "rgba": torch.empty(B, height, width, channels, dtype=dtype, device=device),
            # The softmax's M and Z, kept for the colour gradients.
            "aux": (torch.empty(B, height, width, 2, dtype=dtype, device=device)
                    if with_colors else None),
        }
        block_edge = min(tile, 16)
        launch = KernelLaunch(
            device, dtype, grid=(-(-width // block_edge), -(-height // block_edge), B),
            block=(block_edge, block_edge, 1))
        scalars = {**kernel_settings(settings), "face_count": F, "height": height,
                   "width": width, "tile": tile, "tiles_x": tiles_x, "tiles": tiles,
                   "channels": channels}
        run_kernel("soft_raster_forward", launch,
                   pack_params(launch, {**arrays, **scalars, **dict.fromkeys(_GRADIENTS)}))
        ctx.launch, ctx.scalars = launch, scalars
        ctx.save_for_backward(*(arrays[name] for name in _ARRAYS))
        return arrays["rgba"]

    @staticmethod
    def backward(ctx, grad_rgba):
        arrays = dict(zip(_ARRAYS, ctx.saved_tensors, strict=True))
        colors = arrays["face_colors"]
        gradients = {
            "grad_rgba": grad_rgba.contiguous(),
            "grad_screen": torch.zeros_like(arrays["face_screen"]),
            "grad_colors": None if colors is None else torch.zeros_like(colors),
        }
        run_kernel("soft_raster_backward", ctx.launch,
                   pack_params(ctx.launch, {**arrays, **ctx.scalars, **gradients}))
        return (gradients["grad_screen"], gradients["grad_colors"],
                None, None, None, None, None, None)


def rasterize_cuda(face_screen, face_colors, face_valid, orthographic, width, height,
                   settings: RenderSettings, binned=True):
    """Same contract as `backend.render.raster_cpu.rasterize_cpu`; tensors on a CUDA device.

    binned: True visits per pixel only its tile's faces; False visits every face
    (the naive baseline of the original SoftRas kernel).
    """
    available, why = cuda_available()
    if not available:
        raise RuntimeError(f"the CUDA rasterizer cannot run: {why}")
    return SoftRasterizeCuda.apply(face_screen, face_colors, face_valid, orthographic, width,
                                   height, settings, binned)
