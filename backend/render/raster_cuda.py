"""Soft rasterization on an NVIDIA GPU: kernels/soft_raster.cu through CuPy.

The coarse pass (which faces may touch which 16 px tile, `backend.render.binning`) runs
as a few torch ops; the fine pass (per pixel, over its tile's faces) and its
analytic backward are the CUDA kernels, wrapped in a torch.autograd.Function.
Tensors go between torch and CuPy through DLPack (no copies) and the kernels run
on torch's current stream. The compiled module is cached in-process here and
across processes by CuPy's kernel cache (CUPY_CACHE_DIR).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from .binning import bin_faces, tile_size_for

KERNEL_SOURCE = Path(__file__).resolve().parent.parent / "kernels" / "soft_raster.cu"
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


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

    return cupy.RawModule(code=KERNEL_SOURCE.read_text(), options=("--std=c++14",))


def _kernel(name: str, dtype: torch.dtype):
    if dtype not in _SUFFIX:
        raise ValueError(f"the CUDA rasterizer takes float32 or float64 tensors, got {dtype}")
    return load_kernels().get_function(f"{name}_{_SUFFIX[dtype]}")


def run_kernel(name: str, grid, block, tensors, scalars) -> None:
    """Launch kernel ``name`` (dtype taken from the first tensor) on torch's stream.

    tensors: contiguous torch tensors on one CUDA device, handed over by DLPack
    (outputs are written in place); scalars: numpy scalars of the kernel's types.
    """
    import cupy

    device = tensors[0].device
    kernel = _kernel(name, tensors[0].dtype)
    with cupy.cuda.Device(device.index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
        with stream:
            kernel(grid, block, tuple(cupy.from_dlpack(t.detach()) for t in tensors) + scalars)


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


class SoftRasterizeCuda(torch.autograd.Function):
    """face_screen (B, F, 3, 3), face_colors (B, F, 3, 3) or None -> (B, H, W, C)."""

    @staticmethod
    def forward(ctx, face_screen, face_colors, face_valid, orthographic, width, height,
                settings, binned):
        B, F = face_valid.shape
        dtype, device = face_screen.dtype, face_screen.device
        channels = 1 if face_colors is None else 4
        face_screen = face_screen.contiguous()
        colors = (torch.zeros(1, dtype=dtype, device=device) if face_colors is None
                  else face_colors.contiguous())
        tile, tiles_x, tiles, offsets, faces = build_face_lists(
            face_screen, face_valid, settings.cutoff_distance, width, height, binned)
        if faces.numel() == 0:
            faces = torch.zeros(1, dtype=torch.int32, device=device)  # never read
        ortho = orthographic.to(device=device, dtype=torch.uint8).contiguous()
        rgba = torch.empty(B, height, width, channels, dtype=dtype, device=device)
        aux = torch.empty(B, height, width, 2, dtype=dtype, device=device)

        scalar = np.float32 if dtype == torch.float32 else np.float64
        ctx.consts = (
            np.int32(F), np.int32(height), np.int32(width), np.int32(tile), np.int32(tiles_x),
            np.int32(tiles), np.int32(channels), scalar(settings.sigma),
            scalar(settings.sigma * math.log(1.0 / settings.cutoff - 1.0)),
            scalar(settings.gamma), scalar(settings.background_depth), scalar(settings.near),
            scalar(settings.far),
        )
        block_edge = min(tile, 16)
        ctx.launch = (
            (-(-width // block_edge), -(-height // block_edge), B), (block_edge, block_edge, 1)
        )
        background = tuple(scalar(c) for c in settings.background_color)
        run_kernel("soft_raster_forward", *ctx.launch,
                   (face_screen, colors, ortho, offsets, faces, rgba, aux),
                   ctx.consts + background)
        ctx.with_colors = face_colors is not None
        ctx.save_for_backward(face_screen, colors, ortho, offsets, faces, rgba, aux)
        return rgba

    @staticmethod
    def backward(ctx, grad_rgba):
        face_screen, colors, ortho, offsets, faces, rgba, aux = ctx.saved_tensors
        grad_screen = torch.zeros_like(face_screen)
        grad_colors = torch.zeros_like(colors)
        run_kernel("soft_raster_backward", *ctx.launch,
                   (face_screen, colors, ortho, offsets, faces, rgba, aux,
                    grad_rgba.contiguous(), grad_screen, grad_colors),
                   ctx.consts)
        return (grad_screen, grad_colors if ctx.with_colors else None,
                None, None, None, None, None, None)


def rasterize_cuda(face_screen, face_colors, face_valid, orthographic, width, height, settings,
                   binned=True):
    """Same contract as `backend.render.raster_cpu.rasterize_cpu`; tensors on a CUDA device.

    binned: True visits per pixel only its tile's faces; False visits every face
    (the naive baseline of the original SoftRas kernel).
    """
    available, why = cuda_available()
    if not available:
        raise RuntimeError(f"the CUDA rasterizer cannot run: {why}")
    return SoftRasterizeCuda.apply(face_screen, face_colors, face_valid, orthographic, width,
                                   height, settings, binned)
