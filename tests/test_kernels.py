"""The CUDA kernels: they compile, and they give the CPU path's numbers.

Each agreement test runs twice: on the host emulation of the kernels (any machine
with a C++ compiler; see cuda_emulation.py) and on a real GPU through CuPy
(marked `gpu`, skipped where there is no CUDA device or CuPy).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, has_cuda, icosphere, load_obj, make_cameras

from backend.render.raster_cpu import rasterize_cpu
from backend.render.renderer import RenderSettings, project_faces

KERNELS = sorted((REPO / "kernels").glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_kernel_compiles_with_nvcc(source, tmp_path):
    result = subprocess.run(
        ["nvcc", "--std=c++14", "-arch=sm_80", "--ptx", "-o", str(tmp_path / "out.ptx"),
         str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "out.ptx").read_text()
    for name in ("soft_raster_forward_f32", "soft_raster_backward_f32",
                 "soft_raster_forward_f64", "soft_raster_backward_f64"):
        assert f".entry {name}(" in ptx


def nvrtc_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel, or None."""
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        return None
    found = sorted(Path(next(iter(nvidia.cuda_nvrtc.__path__))).glob("lib/libnvrtc.so*"))
    return str(found[0]) if found else None


@pytest.mark.skipif(nvrtc_library() is None, reason="the nvidia-cuda-nvrtc wheel is missing")
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_kernel_compiles_with_nvrtc_like_cupy(source):
    # CuPy's RawModule compiles with NVRTC, which has no host headers: check that too.
    lib = ctypes.CDLL(nvrtc_library())
    program = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(program), source.read_bytes(),
                                  source.name.encode(), 0, None, None) == 0
    options = (ctypes.c_char_p * 2)(b"--std=c++14", b"--gpu-architecture=compute_80")
    status = lib.nvrtcCompileProgram(program, 2, options)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    lib.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0, log.value.decode()


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
