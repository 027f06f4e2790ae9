"""Run the CUDA rasterizer's code path on the CPU, with kernels/soft_raster.cu
compiled for the host (tests/cuda_emulation.cpp) instead of by CuPy for a GPU.

Everything of backend.render.raster_cuda runs for real (binning, the autograd Function,
argument marshalling); only `run_kernel` is replaced by a ctypes call into the
host build, so the kernels' arithmetic is checked on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "cuda_emulation.cpp", HERE.parent / "kernels" / "soft_raster.cu"]


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("clang++")


def build_library() -> ctypes.CDLL:
    """Compile (once per source version) and load the host build."""
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"softras_emulation_{digest}.so"
    if not target.exists():
        partial = target.with_suffix(".partial.so")
        subprocess.run(
            [compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", "-o", str(partial),
             str(SOURCES[0])],
            check=True, capture_output=True, text=True,
        )
        partial.replace(target)
    return ctypes.CDLL(str(target))


def _ctype(value):
    if isinstance(value, np.int32):
        return ctypes.c_int(int(value))
    if isinstance(value, np.float32):
        return ctypes.c_float(float(value))
    if isinstance(value, np.float64):
        return ctypes.c_double(float(value))
    raise TypeError(f"unexpected kernel scalar {value!r} of type {type(value)}")


def make_run_kernel(library: ctypes.CDLL):
    """A drop-in for backend.render.raster_cuda.run_kernel that runs on CPU tensors."""
    from backend.render.raster_cuda import _SUFFIX

    def run_kernel(name, grid, block, tensors, scalars):
        for t in tensors:
            assert t.device.type == "cpu" and t.is_contiguous(), (name, t.shape)
        function = getattr(library, f"emulate_{name}_{_SUFFIX[tensors[0].dtype]}")
        launch = (ctypes.c_uint * 5)(grid[0], grid[1], grid[2], block[0], block[1])
        pointers = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
        function(launch, *pointers, *(_ctype(s) for s in scalars))

    return run_kernel
