"""Forward + backward time and peak memory of the soft rasterizer.

    python benchmarks/bench_render.py [--impl cpu cuda cuda-naive] [--repeat 5]
                                      [--silhouette]

Cases are (views, image, faces) on a UV sphere filling about half of each view,
default RenderSettings, RGBA output with vertex colours (`render`), or with
--silhouette the alpha alone (`render_silhouette`, what silhouette fitting uses).
Each (implementation, case) runs in its own process so its peak memory is its own:
peak RSS on the CPU, torch.cuda.max_memory_allocated on the GPU. Prints a Markdown
table with the work of each case: the candidate (face, pixel) pairs the CPU
rasterizer enumerates, the pairs among them inside the cutoff (D >= cutoff, the
pairs both implementations shade), and those kept pairs per second for the forward
and the backward pass (medians timed separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.core import threads  # noqa: E402

threads.apply()  # before torch loads its OpenMP runtime; the per-case processes inherit it

# (views, width, height, (rings, segments) of the UV sphere -> 2 * segments * (rings - 1) faces)
CASES = {
    "1x64x64x1.3k": (1, 64, 64, (21, 32)),
    "4x128x128x5k": (4, 128, 128, (41, 64)),
    "8x256x256x20k": (8, 256, 256, (79, 128)),
    "24x256x256x20k": (24, 256, 256, (79, 128)),
    "4x1024x1024x100k": (4, 1024, 1024, (157, 320)),
}
# The CPU runs only where it finishes in reasonable time.
CPU_CASES = ("1x64x64x1.3k", "4x128x128x5k", "8x256x256x20k", "24x256x256x20k")


def uv_sphere(rings: int, segments: int):
    """Closed UV sphere: vertices (V, 3) float32, faces (2 * segments * (rings - 1), 3)."""
    import torch

    theta = torch.linspace(0, torch.pi, rings + 1)[1:-1]
    phi = torch.arange(segments) * (2 * torch.pi / segments)
    ring = torch.stack([torch.sin(theta)[:, None] * torch.cos(phi),
                        torch.sin(theta)[:, None] * torch.sin(phi),
                        torch.cos(theta)[:, None].expand(-1, segments)], -1).reshape(-1, 3)
    vertices = torch.cat([torch.tensor([[0, 0, 1.0]]), ring, torch.tensor([[0, 0, -1.0]])])
    faces = []
    nxt = [(j + 1) % segments for j in range(segments)]
    for j in range(segments):
        faces.append([0, 1 + j, 1 + nxt[j]])
        last = 1 + (rings - 2) * segments
        faces.append([len(vertices) - 1, last + nxt[j], last + j])
    for i in range(rings - 2):
        a, b = 1 + i * segments, 1 + (i + 1) * segments
        for j in range(segments):
            faces.append([a + j, b + j, b + nxt[j]])
            faces.append([a + j, b + nxt[j], a + nxt[j]])
    return vertices.float(), torch.tensor(faces)


def run_case(impl: str, case: str, repeat: int, silhouette: bool) -> dict:
    import torch

    from backend.core.camera import blender_camera, orbit_cameras
    from backend.render.raster_cpu import count_pairs
    from backend.render.renderer import (
        Cameras,
        RenderSettings,
        project_faces,
        render,
        render_silhouette,
    )

    views, width, height, (rings, segments) = CASES[case]
    device = "cpu" if impl == "cpu" else "cuda"
    vertices, faces = uv_sphere(rings, segments)
    mats = orbit_cameras(views, [25.0], 4.0)
    cams = Cameras.from_matrices(
        [blender_camera(matrix_world=m, resolution_x=width, resolution_y=height) for m in mats],
        device=device)
    vertices, faces = vertices.to(device), faces.to(device)
    colors = torch.rand(vertices.shape, generator=torch.Generator().manual_seed(0)).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        """(forward seconds, backward seconds) of one render and its backward pass."""
        v = vertices.clone().requires_grad_()
        start = time.perf_counter()
        if silhouette:
            out = render_silhouette(v, faces, cams, backend=impl)
        else:
            out = render(v, faces, cams, colors.clone().requires_grad_(), backend=impl)
        sync()
        middle = time.perf_counter()
        out.sum().backward()
        sync()
        return middle - start, time.perf_counter() - middle

    step()  # warm-up: kernel compilation / cache load, allocator
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(repeat)]
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    settings = RenderSettings()
    candidates, kept = count_pairs(*project_faces(vertices, faces, cams, settings), width,
                                   height, settings)

    def median(values):
        return sorted(values)[len(values) // 2] * 1e3

    return {"impl": impl, "case": case, "faces": int(faces.shape[0]),
            "median_ms": median([f + b for f, b in times]),
            "forward_ms": median([f for f, _ in times]),
            "backward_ms": median([b for _, b in times]),
            "min_ms": min(f + b for f, b in times) * 1e3, "peak_mb": peak_mb,
            "candidates": candidates, "kept": kept}


def machine(impls) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()}-core CPU ({cpu}), torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"
    if any(i != "cpu" for i in impls) and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=None,
                        help="cpu, cuda (binned), cuda-naive; default: all available")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--silhouette", action="store_true",
                        help="time render_silhouette (alpha only) instead of RGBA")
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.repeat, args.silhouette)))
        return

    import torch

    from backend.render.raster_cuda import cuda_available

    impls = args.impl or (["cuda-naive", "cuda", "cpu"] if cuda_available()[0] else ["cpu"])
    if not cuda_available()[0] and any(i != "cpu" for i in impls):
        sys.exit(f"cannot run the CUDA implementations: {cuda_available()[1]}")
    print(f"Machine: {machine(impls)}; output: {'alpha' if args.silhouette else 'RGBA'}")
    print("| case (views x image x faces) | implementation | forward+backward (median) "
          "| forward | backward | candidate pairs | kept pairs | kept pairs/s forward "
          "| kept pairs/s backward | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for case in args.cases:
        for impl in impls:
            if impl == "cpu" and case not in CPU_CASES:
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--one", impl, case, "--repeat", str(args.repeat)]
                + (["--silhouette"] if args.silhouette else []),
                capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {case} | {impl} | failed: {out.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[(impl, case)] = r
            kind = "peak RSS" if impl == "cpu" else "GPU peak"
            print(f"| {case} ({r['faces']} faces) | {impl} | {r['median_ms']:.1f} ms "
                  f"| {r['forward_ms']:.1f} ms | {r['backward_ms']:.1f} ms "
                  f"| {r['candidates'] / 1e6:.2f} M | {r['kept'] / 1e6:.2f} M "
                  f"| {r['kept'] / r['forward_ms'] / 1e3:.1f} M/s "
                  f"| {r['kept'] / r['backward_ms'] / 1e3:.1f} M/s "
                  f"| {r['peak_mb']:.0f} MB {kind} |", flush=True)
    for case in args.cases:
        if ("cuda", case) in results and ("cuda-naive", case) in results:
            speedup = results[("cuda-naive", case)]["median_ms"] / results[("cuda", case)][
                "median_ms"]
            print(f"binned vs naive at {case}: {speedup:.1f}x faster")
    del torch


if __name__ == "__main__":
    main()
