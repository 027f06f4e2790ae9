"""Shared fixtures: small meshes and cameras, and the CUDA kernels on CPU or GPU."""

from __future__ import annotations

import os
from pathlib import Path

from backend.core import threads

# Before torch loads its OpenMP runtime, which reads the settings once: the tests share
# the cores with each other and with everything else on the machine.
threads.apply()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from backend.core.camera import blender_camera, orbit_cameras  # noqa: E402
from backend.fit.mesh_ops import icosphere as mesh_icosphere  # noqa: E402
from backend.render.renderer import Cameras  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# The 16 calibrated temple photos the repository ships (data/templeSparseRing/README.txt).
TEMPLE_DIR = REPO / "data" / "templeSparseRing"


def write_photos(folder: Path, kinds: list[str], size=(240, 180)) -> Path:
    """PNG photos for camera solves: "noise" (blobs a few pixels wide: plenty of SIFT
    features, matching no other photo) or "plain" (grey: no features)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    for i, kind in enumerate(kinds):
        if kind == "noise":
            small = rng.integers(0, 256, size=(size[1] // 4, size[0] // 4), dtype=np.uint8)
            image = Image.fromarray(small).resize(size, Image.BILINEAR)
        else:
            image = Image.new("L", size, 128)
        image.save(folder / f"photo_{i}.png")
    return folder


def has_cuda() -> bool:
    """A real CUDA device and CuPy (independent of the emulation fixture's patch)."""
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None


def load_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangle faces (F, 3) int64 of a triangulated OBJ."""
    verts, faces = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    return np.array(verts), np.array(faces, dtype=np.int64)


def icosphere(subdivisions: int = 2, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`backend.fit.mesh_ops.icosphere` as torch: vertices (V, 3) float64, faces (F, 3) int64."""
    v, f = mesh_icosphere(subdivisions)
    return torch.tensor(v * radius, dtype=torch.float64), torch.tensor(f, dtype=torch.int64)


def make_cameras(count=4, width=64, height=48, distance=4.0, dtype=torch.float64,
                 orthographic=False, **kwargs) -> Cameras:
    """``count`` cameras on a ring at 20 degrees elevation looking at the origin."""
    mats = orbit_cameras(count, [20.0], distance, azimuth_offset_deg=10.0)
    cams = [blender_camera(matrix_world=m, resolution_x=width, resolution_y=height,
                           camera_type="ORTHO" if orthographic else "PERSP", ortho_scale=3.0,
                           **kwargs) for m in mats]
    return Cameras.from_matrices(cams, dtype=dtype)


@pytest.fixture
def emulated_cuda(monkeypatch):
    """backend.render.raster_cuda with its kernels compiled for the host (see cuda_emulation.py)."""
    from cuda_emulation import build_library, compiler, make_run_kernel

    if compiler() is None:
        pytest.skip("no C++ compiler to build the host emulation of the CUDA kernels")
    import backend.render.raster_cuda as raster_cuda

    monkeypatch.setattr(raster_cuda, "run_kernel", make_run_kernel(build_library()))
    monkeypatch.setattr(raster_cuda, "cuda_available", lambda: (True, ""))
    return raster_cuda


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    """The add-on registered from this checkout in bpy (Blender as a module), its user
    folder in a temporary place; unregistered after the module's tests."""
    pytest.importorskip("bpy")
    import softras_blender

    previous = os.environ.get("SOFTRAS_USER_DIR")
    os.environ["SOFTRAS_USER_DIR"] = str(tmp_path_factory.mktemp("softras_user"))
    softras_blender.register()
    yield softras_blender
    softras_blender.unregister()
    if previous is None:
        del os.environ["SOFTRAS_USER_DIR"]
    else:
        os.environ["SOFTRAS_USER_DIR"] = previous
