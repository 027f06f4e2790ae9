"""The CUDA kernels: they compile, and they give the CPU path's numbers.

Each agreement test runs twice: on the host emulation of the kernels (any machine
with a C++ compiler; see cuda_emulation.py) and on a real GPU through CuPy
(marked `gpu`, skipped where there is no CUDA device or CuPy).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, has_cuda, icosphere, load_obj, make_cameras
from cuda_emulation import compile_library, compiler

from backend.render.raster_cpu import rasterize_cpu
from backend.render.raster_cuda import (
    KERNEL_SOURCE,
    NVRTC_OPTIONS,
    PARAMS_FIELDS,
    KernelLaunch,
    pack_params,
    params_dtype,
)
from backend.render.renderer import RenderSettings, project_faces

ENTRY_POINTS = ("soft_raster_forward_f32", "soft_raster_backward_f32",
                "soft_raster_forward_f64", "soft_raster_backward_f64")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_kernel_compiles_with_nvcc(tmp_path):
    result = subprocess.run(
        ["nvcc", "--std=c++14", "-arch=sm_80", "--ptx", "-o", str(tmp_path / "out.ptx"),
         str(KERNEL_SOURCE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "out.ptx").read_text()
    for name in ENTRY_POINTS:
        assert f".entry {name}(" in ptx


def nvrtc_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel, or None."""
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        return None
    found = sorted(Path(next(iter(nvidia.cuda_nvrtc.__path__))).glob("lib/libnvrtc.so*"))
    return str(found[0]) if found else None


needs_nvrtc = pytest.mark.skipif(nvrtc_library() is None,
                                 reason="the nvidia-cuda-nvrtc wheel is missing")


def nvrtc_compile(source: str) -> str:
    """PTX for ``source`` compiled by NVRTC with CuPy's options (plus an architecture,
    which CuPy adds for the device at hand); fails the test with NVRTC's log."""
    lib = ctypes.CDLL(nvrtc_library())
    program = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(),
                                  KERNEL_SOURCE.name.encode(), 0, None, None) == 0
    options = [o.encode() for o in NVRTC_OPTIONS] + [b"--gpu-architecture=compute_80"]
    status = lib.nvrtcCompileProgram(program, len(options),
                                     (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    ptx = b""
    if status == 0:
        lib.nvrtcGetPTXSize(program, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(program, buffer)
        ptx = buffer.value
    lib.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0, log.value.decode()
    return ptx.decode()


@needs_nvrtc
def test_kernel_compiles_with_nvrtc_like_cupy():
    # CuPy's RawModule compiles with NVRTC, which has no host headers: check that too.
    ptx = nvrtc_compile(KERNEL_SOURCE.read_text())
    for name in ENTRY_POINTS:
        assert f".entry {name}(" in ptx


# The struct both kernels take, as the Python mirror lays it out and as each compiler
# does. Offsets and sizes are written as addresses counted from 0: constant
# initialisers that NVRTC (which has no offsetof) accepts and stores in the PTX.
LAYOUT_SYMBOL = "softras_params_layout"
LAYOUT_STRUCTS = ((torch.float32, "float"), (torch.float64, "double"))


def layout_labels() -> list[str]:
    return [label for _, c_type in LAYOUT_STRUCTS
            for label in [f"sizeof(SoftRasParams<{c_type}>)"] + [
                f"{c_type} {name} {what}" for name, _ in PARAMS_FIELDS
                for what in ("offset", "size")]]


def layout_probe() -> str:
    """C++ defining ``LAYOUT_SYMBOL``, an array of `layout_labels()`'s numbers."""
    values = []
    for _, c_type in LAYOUT_STRUCTS:
        struct = f"SoftRasParams<{c_type}>"
        values.append(f"(const char*)0 + sizeof({struct})")
        for name, _ in PARAMS_FIELDS:
            values.append(f"(const char*)&(({struct}*)0)->{name}")
            values.append(f"(const char*)0 + sizeof((({struct}*)0)->{name})")
    body = ",\n    ".join(values)
    return f'extern "C" {{\n__device__ const char* {LAYOUT_SYMBOL}[] = {{\n    {body}}};\n}}\n'


def mirror_layout() -> dict[str, int]:
    """`layout_labels()`'s numbers from raster_cuda.params_dtype."""
    values = []
    for dtype, _ in LAYOUT_STRUCTS:
        layout = params_dtype(dtype)
        values.append(layout.itemsize)
        for name, _ in PARAMS_FIELDS:
            field, offset = layout.fields[name][:2]
            values += [offset, field.itemsize]
    return dict(zip(layout_labels(), values, strict=True))


def host_layout() -> dict[str, int]:
    """The numbers as the host compiler lays the struct out for the emulation."""
    if compiler() is None:
        pytest.skip("no C++ compiler to build the host emulation of the CUDA kernels")
    labels = layout_labels()
    values = (ctypes.c_size_t * len(labels)).in_dll(compile_library(layout_probe()),
                                                     LAYOUT_SYMBOL)
    return dict(zip(labels, values, strict=True))


def nvrtc_layout() -> dict[str, int]:
    """The numbers as NVRTC lays the struct out for the GPU, read from the PTX."""
    if nvrtc_library() is None:
        pytest.skip("the nvidia-cuda-nvrtc wheel is missing")
    ptx = nvrtc_compile(KERNEL_SOURCE.read_text() + layout_probe())
    found = re.search(rf"\.u64 {LAYOUT_SYMBOL}\[\d+\] = \{{([^}}]*)\}}", ptx)
    assert found, f"no initialised {LAYOUT_SYMBOL} in the PTX"
    values = [int(v) for v in found.group(1).split(",")]
    return dict(zip(layout_labels(), values, strict=True))


@pytest.mark.parametrize("measure", [host_layout, nvrtc_layout], ids=["host", "nvrtc"])
def test_params_mirror_matches_the_kernels_struct(measure):
    measured, mirror = measure(), mirror_layout()
    differences = {k: (mirror[k], measured[k]) for k in mirror if mirror[k] != measured[k]}
    assert not differences, f"(raster_cuda.PARAMS_FIELDS, compiled) differ: {differences}"


def test_params_mirror_leaves_no_gap_for_a_field_it_lacks():
    # Equal sizes rule out a struct field that PARAMS_FIELDS lacks only where the
    # layout has no padding it could hide in; the float32 instantiation has none.
    layout = params_dtype(torch.float32)
    assert layout.itemsize == sum(layout.fields[name][0].itemsize for name in layout.names)


def test_pack_params_takes_every_field_by_name_and_checks_each_tensor():
    launch = KernelLaunch(torch.device("cpu"), torch.float32, (1, 1, 1), (1, 1, 1))
    values = {name: None if kind.endswith("*") else 1 for name, kind in PARAMS_FIELDS}
    screen = torch.ones(2, 3, 3)
    values.update(face_screen=screen, sigma=0.5, background=(0.1, 0.2, 0.3))
    params = pack_params(launch, values)
    assert params["face_screen"][0] == screen.data_ptr() and params["grad_rgba"][0] == 0
    assert params["sigma"][0] == 0.5 and params["background"][0][2] == pytest.approx(0.3)

    with pytest.raises(ValueError, match=r"missing \['channels'\], unknown \['chanels'\]"):
        pack_params(launch, {**{k: v for k, v in values.items() if k != "channels"},
                             "chanels": 4})
    for name, wrong in [("face_screen", screen.double()), ("face_screen", screen.mT),
                        ("tile_offsets", torch.zeros(3, dtype=torch.int64))]:
        with pytest.raises(ValueError, match=f"kernel parameter {name} needs a contiguous"):
            pack_params(launch, {**values, name: wrong})


@pytest.fixture(params=["emulated", pytest.param("gpu", marks=pytest.mark.gpu)])
def kernels(request):
    """(rasterize_cuda, device) for the host emulation or a real GPU."""
    if request.param == "emulated":
        return request.getfixturevalue("emulated_cuda").rasterize_cuda, "cpu"
    if not has_cuda():
        pytest.skip("needs an NVIDIA GPU with CuPy")
    from backend.render.raster_cuda import rasterize_cuda

    return rasterize_cuda, "cuda"


def spot_mesh():
    path = SHARED_DATA / "meshes" / "spot" / "spot_triangulated.obj"
    if not path.exists():
        pytest.skip(f"test mesh missing: {path}")
    v, f = load_obj(path)
    v = torch.tensor(v) - torch.tensor(v).mean(0)
    return v / v.abs().max(), torch.tensor(f)


def compare(kernels, vertices, faces, cameras, settings, with_colors, binned, dtype):
    """Forward within 1e-5 absolute, gradients within 1e-3 of their largest entry."""
    rasterize_cuda, device = kernels
    g = torch.Generator().manual_seed(0)
    colors = torch.rand(vertices.shape, generator=g, dtype=torch.float64)
    results = []
    for impl, dev in (("cpu", "cpu"), ("kernel", device)):
        v = vertices.to(dev, dtype).requires_grad_()
        c = colors.to(dev, dtype).requires_grad_()
        cams = cameras.to(device=dev, dtype=dtype)
        face_screen, valid = project_faces(v, faces.to(dev), cams, settings)
        face_colors = None
        if with_colors:
            face_colors = c[faces.to(dev)].unsqueeze(0).expand(len(cams), -1, -1, -1)
        args = (face_screen, face_colors, valid, cams.orthographic, cams.width, cams.height,
                settings)
        out = rasterize_cpu(*args) if impl == "cpu" else rasterize_cuda(*args, binned=binned)
        weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64).to(dev, dtype)
        grads = torch.autograd.grad((out * weights).sum(), (v, c) if with_colors else (v,))
        results.append((out.cpu().double(), [x.cpu().double() for x in grads]))
    (ref, ref_grads), (got, got_grads) = results
    assert ref[..., -1].max() > 0.5, "the mesh should be in view"
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3 * b.abs().max().item(), rtol=0)


@pytest.mark.parametrize("binned", [True, False], ids=["binned", "naive"])
@pytest.mark.parametrize("with_colors", [True, False], ids=["rgba", "alpha"])
@pytest.mark.parametrize("size", [(32, 32), (48, 20), (20, 44)], ids=str)
def test_kernels_match_cpu_on_a_sphere(kernels, binned, with_colors, size):
    v, f = icosphere(2)
    v = v + 0.03 * torch.randn(v.shape, generator=torch.Generator().manual_seed(3),
                               dtype=v.dtype)
    compare(kernels, v, f, make_cameras(3, *size, distance=3.5),
            RenderSettings(sigma=0.5, gamma=0.01, near=0.5, far=10), with_colors, binned,
            torch.float32)


@pytest.mark.parametrize("orthographic", [False, True])
def test_kernels_match_cpu_in_float64(kernels, orthographic):
    v, f = icosphere(1)
    compare(kernels, v, f, make_cameras(2, 24, 18, distance=3.5, orthographic=orthographic),
            RenderSettings(sigma=1.0, gamma=0.05, near=0.5, far=10,
                           background_color=(0.3, 0.2, 0.1)), True, True, torch.float64)


@pytest.mark.parametrize("scale, dtype", [(0.3, torch.float32), (0.05, torch.float64)])
def test_kernels_match_cpu_when_many_faces_pile_up_in_one_tile(kernels, scale, dtype):
    # 5120 faces crowded into a few 16 px tiles (scale 0.3) or into a few pixels of one
    # tile (0.05; there float32 sums over ~1000 faces per pixel differ with the order
    # of summation, so that case is compared in float64).
    v, f = icosphere(4)
    compare(kernels, v * scale, f, make_cameras(2, 96, 96, distance=3.0),
            RenderSettings(sigma=0.3, gamma=0.01, near=0.5, far=10), True, True, dtype)


def test_kernels_match_cpu_on_spot(kernels):
    if kernels[1] == "cpu":
        pytest.skip("the 5.9k-face cow at 128 px is a GPU-sized case (slow in emulation)")
    v, f = spot_mesh()
    compare(kernels, v, f, make_cameras(4, 128, 96, distance=3.0),
            RenderSettings(sigma=0.3, gamma=1e-3, near=0.5, far=10), True, True, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("subdivisions, size", [(3, (64, 64)), (5, (256, 192)), (6, (200, 320))])
def test_gpu_matches_cpu_from_hundreds_to_tens_of_thousands_of_faces(subdivisions, size):
    if not has_cuda():
        pytest.skip("needs an NVIDIA GPU with CuPy")
    from backend.render.raster_cuda import rasterize_cuda

    v, f = icosphere(subdivisions)  # 1280, 20480 and 81920 faces
    compare((rasterize_cuda, "cuda"), v, f, make_cameras(2, *size, distance=3.0),
            RenderSettings(sigma=0.3, gamma=1e-3, near=0.5, far=10), True, True, torch.float32)


@pytest.mark.gpu
def test_gpu_render_is_deterministic_and_differentiable_end_to_end():
    if not has_cuda():
        pytest.skip("needs an NVIDIA GPU with CuPy")
    from backend.render.renderer import render

    v, f = icosphere(3)
    v = v.float().cuda().requires_grad_()
    cams = make_cameras(4, 64, 64, dtype=torch.float32).to(device="cuda")
    a = render(v, f.cuda(), cams)
    b = render(v, f.cuda(), cams)
    assert torch.equal(a, b)
    a[..., 3].sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
