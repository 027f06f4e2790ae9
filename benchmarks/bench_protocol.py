"""How fast the wire protocol is, and what share of a fit it costs.

    python benchmarks/bench_protocol.py [--frames 300] [--iterations 100]

1. Streaming: a child process writes vertices frames of a 100k-vertex mesh to its
   stdout as fast as it can; this process reads and decodes them from the pipe
   (what the add-on's reader thread does). Also a 1M-vertex final mesh and a fit
   request with 100 images of 256x256, and encode/decode alone.
2. Share of a fit: the same fit through the real backend process with vertices
   posted after every iteration (the worst case; the service sends at most
   --max-vertex-rate per second) and with vertices only at the first and last
   iteration; the writer thread's busy time is measured by the service itself.

Prints figures; not a test. Record them in docs/benchmarks.md under "Protocol".
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.core import protocol  # noqa: E402
from backend.core.messages import View  # noqa: E402
from softras_blender import client as client_module  # noqa: E402

WRITER = """
import sys, numpy as np
from backend.core import protocol
count, kind = int(sys.argv[1]), sys.argv[2]
out = sys.stdout.buffer
rng = np.random.default_rng(0)
if kind == "vertices":
    message = {"type": "vertices", "fit_id": 1, "iteration": 0, "faces": None,
               "vertices": rng.standard_normal((100_000, 3)).astype(np.float32)}
elif kind == "final":
    message = {"type": "done", "fit_id": 1, "status": "done", "message": "", "colors": None,
               "vertices": rng.standard_normal((1_000_000, 3)).astype(np.float32),
               "faces": rng.integers(0, 1_000_000, (2_000_000, 3)).astype(np.int32),
               "metrics": {}}
else:
    message = {"type": "start_fit", "fit_id": 1, "vertices": None, "faces": None, "options": {},
               "views": [{"name": f"c{i}", "camera": {}, "held_out": False,
                          "image": rng.random((256, 256, 4), dtype=np.float32)}
                         for i in range(100)]}
for i in range(count):
    message["fit_id"] = i
    protocol.write_frame(out, message)
"""


def bench_pipe(kind: str, count: int) -> tuple[float, float, int]:
    """(frames per second, MB per second, bytes per frame) through a real pipe."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(count), kind],
                             stdout=subprocess.PIPE, env=env)
    first = protocol.read_frame(child.stdout)  # the child has started and built its data
    start = time.perf_counter()
    received = 0
    size = len(protocol.encode_frame(first))
    while protocol.read_frame(child.stdout) is not None:
        received += 1
    elapsed = time.perf_counter() - start
    child.wait()
    assert received == count - 1, (received, count)
    return received / elapsed, received * size / elapsed / 1e6, size


def bench_codec(repeats: int = 200) -> tuple[float, float]:
    """Milliseconds to encode (chunks, no copy) and to decode one 100k-vertex frame."""
    vertices = np.random.default_rng(0).standard_normal((100_000, 3)).astype(np.float32)
    message = {"type": "vertices", "fit_id": 1, "iteration": 0, "vertices": vertices,
               "faces": None}
    start = time.perf_counter()
    for _ in range(repeats):
        protocol.frame_chunks(message)
    encode = (time.perf_counter() - start) / repeats
    data = protocol.encode_frame(message)
    start = time.perf_counter()
    for _ in range(repeats):
        protocol.decode_frame(data)
    decode = (time.perf_counter() - start) / repeats
    return encode * 1e3, decode * 1e3


def fit_scene(size: int, count: int):
    """Silhouettes of an off-centre ellipsoid from a ring of cameras (views as dicts)."""
    import torch

    from backend.core.camera import blender_camera, orbit_cameras
    from backend.fit.mesh_ops import icosphere
    from backend.render.renderer import Cameras, RenderSettings, render_silhouette

    v, f = icosphere(3)
    target = torch.tensor(v * [1.0, 0.6, 0.45] + [0.2, 0.0, 0.1])
    cams = [blender_camera(matrix_world=m, resolution_x=size, resolution_y=size, lens=50)
            for m in orbit_cameras(count // 2, [10.0, 40.0], 5.0, azimuth_offset_deg=15.0)]
    alpha = render_silhouette(target, torch.as_tensor(f), Cameras.from_matrices(
        cams, dtype=torch.float64), RenderSettings(sigma=0.05)).numpy()
    views = []
    for i, (cam, a) in enumerate(zip(cams, alpha, strict=True)):
        image = np.ones((size, size, 4), np.float32)
        image[..., 3] = a
        views.append(View(cam, image, f"cam{i}"))
    return views


def run_fit(client, views, options: dict) -> dict:
    """One fit through the backend, polled every 10 ms like the add-on's timer."""
    streamed = 0
    start = time.perf_counter()
    client.start_fit(None, None, views, options)
    while True:
        events = client.poll()
        if client.latest_vertices() is not None:
            streamed += 1
        if events and events[-1]["type"] in ("done", "error"):
            break
        time.sleep(0.01)
    wall = time.perf_counter() - start
    done = events[-1]
    if done["type"] == "error":
        raise RuntimeError(done["message"])
    return {"wall": wall, "fit": done["metrics"]["timing"]["total"], "streamed": streamed,
            "stats": done["metrics"]["protocol"], "vertices": len(done["vertices"]),
            "iou": done["metrics"]["mean_fit_iou"]}


def bench_fit_share(args) -> tuple[dict, dict]:
    """The same fit through one backend process, vertices posted after every iteration
    vs only at the first and last: (every, minimal), the faster of ``repeats`` runs."""
    views = fit_scene(args.size, args.views)
    base = {"iterations": args.iterations, "device": "cpu", "init_faces": args.init_faces}
    client = client_module.BackendClient(
        client_module.default_backend_command(sys.executable)
        + ["--max-vertex-rate", str(args.max_vertex_rate)], timeout=60)
    client.start()
    try:
        every, minimal = [], []
        for _ in range(args.repeats):  # interleaved: the machine's load drifts
            every.append(run_fit(client, views, {**base, "stream_every": 1}))
            minimal.append(run_fit(client, views, {**base, "stream_every": args.iterations}))
    finally:
        client.shutdown()
    return min(every, key=lambda r: r["wall"]), min(minimal, key=lambda r: r["wall"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--init-faces", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--max-vertex-rate", type=float, default=10.0)
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, numpy {np.__version__}")
    print("\n1. Streaming through a real pipe (child writes, this process reads and decodes)")
    for kind, count, label in (("vertices", args.frames, "100k-vertex vertices frame"),
                               ("final", 6, "1M-vertex mesh + 2M faces (done)"),
                               ("request", 6, "fit request, 100 images 256x256 RGBA f32")):
        fps, mbps, size = bench_pipe(kind, count)
        print(f"   {label:42s} {size / 1e6:8.1f} MB/frame {fps:9.1f} frames/s {mbps:8.0f} MB/s")
    encode_ms, decode_ms = bench_codec()
    print(f"   100k-vertex frame: encode {encode_ms:.3f} ms (no copy), decode from bytes "
          f"{decode_ms:.3f} ms")

    print(f"\n2. Share of a fit: {args.views} views {args.size}x{args.size}, visual hull start "
          f"({args.init_faces} faces), {args.iterations} iterations on the CPU, through the "
          f"backend process; at most {args.max_vertex_rate:g} vertices frames/s; best of "
          f"{args.repeats}")
    every, minimal = bench_fit_share(args)
    for label, r in (("vertices posted every iteration", every),
                     ("vertices at first and last only", minimal)):
        s = r["stats"]
        print(f"   {label}: wall {r['wall']:.2f} s (fit {r['fit']:.2f} s), IoU {r['iou']:.3f}, "
              f"{s['frames']} frames ({s['vertex_frames']} vertices frames of {r['vertices']} "
              f"vertices, {r['streamed']} seen by the client), {s['bytes'] / 1e6:.2f} MB, "
              f"fit thread posting {s['post_seconds'] * 1e3:.1f} ms, writer thread busy "
              f"{s['write_seconds'] * 1e3:.1f} ms")
    s = every["stats"]
    share = (s["post_seconds"] + s["write_seconds"]) / every["wall"]
    difference = (every["wall"] - minimal["wall"]) / every["wall"]
    print(f"   protocol share of the fit's wall time (streaming every iteration): {share:.2%} "
          f"(posting + writing); wall-time difference streaming vs not {difference:+.1%}")


if __name__ == "__main__":
    main()
