"""Run the CUDA rasterizer's code path on the CPU, with kernels/soft_raster.cu
compiled for the host (tests/cuda_emulation.cpp) instead of by CuPy for a GPU.

Everything of backend.render.raster_cuda runs for real (binning, the autograd Function,
packing the kernels' SoftRasParams); only `run_kernel` is replaced by a ctypes call
into the host build, so the kernels' arithmetic is checked on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "cuda_emulation.cpp", HERE.parent / "kernels" / "soft_raster.cu"]


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("clang++")


def compile_library(extra_code: str = "") -> ctypes.CDLL:
    """Compile (once per source version) and load the host build, with ``extra_code``
    (C++ that may use the kernels' definitions) appended."""
    code = f'#include "{SOURCES[0]}"\n{extra_code}'
    sources = b"".join(p.read_bytes() for p in SOURCES) + code.encode()
    digest = hashlib.sha1(sources).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"softras_emulation_{digest}.so"
    if not target.exists():
        source = target.with_suffix(".cpp")
        source.write_text(code)
        partial = target.with_suffix(".partial.so")
        result = subprocess.run(
            [compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", "-o", str(partial),
             str(source)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the host emulation failed:\n{result.stderr}")
        partial.replace(target)
    return ctypes.CDLL(str(target))


def build_library() -> ctypes.CDLL:
    """The host build of the kernels."""
    return compile_library()


def make_run_kernel(library: ctypes.CDLL):
    """A drop-in for backend.render.raster_cuda.run_kernel that runs on the CPU."""
    from backend.render.raster_cuda import kernel_name, params_dtype

    def run_kernel(name, launch, params):
        if launch.device.type != "cpu" or launch.block[2] != 1:
            raise ValueError(f"the emulation runs CPU launches with flat blocks, got {launch}")
        if params.shape != (1,) or params.dtype != params_dtype(launch.dtype):
            raise ValueError(f"params must be pack_params' (1,) array, got {params!r}")
        function = getattr(library, f"emulate_{kernel_name(name, launch.dtype)}")
        dims = (ctypes.c_uint * 5)(*launch.grid, *launch.block[:2])
        function(dims, ctypes.c_void_p(params.ctypes.data))

    return run_kernel
