"""Contention: how a CPU fit slows down when other processes want the cores.

    python benchmarks/bench_contention.py [--iterations 200] [--size 128] [--repeats 1]
        [--settings before one-thread automatic] [--loads idle busy1 busy2 ui]
        [--extra NAME=VAR=VALUE[,VAR=VALUE]:THREADS ...]

The fit: a target mesh (a lumpy ellipsoid) rendered by the soft rasterizer with near-hard
edges from 24 cameras (elevations -15, 15, 45 degrees x 8 azimuths) at SIZE x SIZE,
plus 8 held-out views at other angles; the fit starts from the carved visual hull and
runs ITERATIONS iterations with the default options on the CPU. Each fit runs through
the real backend process (softras_blender.client.BackendClient, `python -m backend
serve`), polled by this process at 60 Hz like the add-on's timer, after a 2-iteration
warm-up fit in the same backend.

Loads beside the fit: none ("idle"), one or two busy processes (``python -c "while True:
pass"``, "busy1", "busy2"), and "ui": this process mimics Blender's UI at 60 Hz, each
frame reading the newest streamed vertices, computing their normals as a mesh update
does, and spending ``--ui-frame-ms`` of CPU on the redraw.

Settings: "before" is the backend before it chose its threading (libgomp's default wait:
GOMP_SPINCOUNT=300000, about 3 ms of spinning; all cores), "one-thread" is ``--threads
1``, "automatic" is the backend's own choice (backend/core/threads.py). ``--extra`` adds
a setting: a name, environment variables and a --threads value, e.g.
``spin10k=GOMP_SPINCOUNT=10000:0``.

Prints, per setting and load, the fit's wall time (median of the repeats, as the client
sees it) and its ratio to the same setting's idle time, with what the backend's hello
reported. Not a test: it prints figures; record them in docs/benchmarks.md, "Contention".
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO_ROOT)

from backend.core import threads  # noqa: E402

# This process renders the targets with torch: it must not spin beside the backend.
threads.apply()

import numpy as np  # noqa: E402

from backend.core.camera import blender_camera, orbit_cameras  # noqa: E402
from backend.core.messages import View  # noqa: E402
from softras_blender.client import BackendClient, default_backend_command  # noqa: E402

FIT_ELEVATIONS = (-15.0, 15.0, 45.0)
FIT_AZIMUTHS = 8
HELD_OUT = [(0.0, 22.5), (30.0, 67.5), (60.0, 112.5), (-30.0, 157.5),
            (5.0, 202.5), (35.0, 247.5), (-5.0, 292.5), (25.0, 337.5)]
UI_HZ = 60.0
BUSY = "while True: pass"


@dataclass
class Setting:
    """How the backend is started: extra environment variables and ``--threads``."""

    name: str
    environment: dict[str, str] = field(default_factory=dict)
    threads: int = 0


BUILT_IN = {
    "before": Setting("before", {"GOMP_SPINCOUNT": "300000"}),
    "one-thread": Setting("one-thread", {}, 1),
    "automatic": Setting("automatic"),
}


def parse_extra(text: str) -> Setting:
    """``name=VAR=VALUE[,VAR=VALUE...]:THREADS`` (or ``name=:THREADS``) as a Setting."""
    try:
        name, rest = text.split("=", 1)
        variables, count = rest.rsplit(":", 1)
        environment = dict(item.split("=", 1) for item in variables.split(",") if item)
        return Setting(name, environment, int(count))
    except ValueError as exc:
        raise SystemExit(f"--extra {text!r}: expected NAME=VAR=VALUE[,VAR=VALUE]:THREADS, "
                         f"e.g. spin10k=GOMP_SPINCOUNT=10000:0 ({exc})") from exc


def fit_views(size: int) -> list[dict]:
    """24 fitting and 8 held-out views of a lumpy ellipsoid, as fit-request dicts."""
    import torch

    from backend.fit.mesh_ops import icosphere
    from backend.render.renderer import Cameras, RenderSettings, render_silhouette

    v, f = icosphere(4)
    lumps = 1.0 + 0.15 * np.sin(3.0 * v[:, 0]) * np.cos(2.0 * v[:, 1]) + 0.1 * v[:, 2] ** 2
    target = v * lumps[:, None] * [1.0, 0.7, 0.55]
    common = {"resolution_x": size, "resolution_y": size, "lens": 50.0}
    mats = list(orbit_cameras(FIT_AZIMUTHS, FIT_ELEVATIONS, 5.0))
    mats += [orbit_cameras(1, [el], 5.0, azimuth_offset_deg=az)[0] for el, az in HELD_OUT]
    cams = [blender_camera(matrix_world=m, **common) for m in mats]
    with torch.no_grad():
        alpha = render_silhouette(torch.tensor(target, dtype=torch.float32), torch.tensor(f),
                                  Cameras.from_matrices(cams), RenderSettings(sigma=0.01))
    views = []
    for i, (cam, a) in enumerate(zip(cams, alpha.numpy(), strict=True)):
        image = np.ones((size, size, 4), np.float32)
        image[..., 3] = a
        views.append(View(cam, image, f"view {i}", held_out=i >= len(cams) - len(HELD_OUT)))
    return views


def start_load(load: str) -> list[subprocess.Popen]:
    """The busy processes a load needs ("busy1", "busy2"; none for "idle" and "ui")."""
    count = {"idle": 0, "ui": 0, "busy1": 1, "busy2": 2}[load]
    return [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(count)]


def stop_load(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) float32 area-weighted vertex normals: the CPU work of a mesh update."""
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def run_fit(client: BackendClient, views: list[dict], options: dict, ui_frame_s: float) -> dict:
    """One fit, polled at 60 Hz; with ``ui_frame_s`` > 0 each frame also updates the
    mesh from the newest vertices and burns that much CPU. Returns the done event with
    "wall" (seconds from request to done) and "updates" (meshes drawn) added."""
    faces, updates = None, 0
    start = time.perf_counter()
    client.start_fit(None, None, views, options)
    next_frame = start
    while True:
        for event in client.poll():
            if event["type"] == "error":
                raise RuntimeError(f"the fit failed: {event['message']}")
            if event["type"] == "done":
                event.update(wall=time.perf_counter() - start, updates=updates)
                return event
        mesh = client.latest_mesh()
        if mesh is not None and ui_frame_s > 0:
            faces = mesh["faces"] if mesh["faces"] is not None else faces
            if faces is not None:
                vertex_normals(mesh["vertices"], faces)
                updates += 1
        if ui_frame_s > 0:
            burn = time.perf_counter() + ui_frame_s
            while time.perf_counter() < burn:
                pass
        next_frame += 1.0 / UI_HZ
        time.sleep(max(0.0, next_frame - time.perf_counter()))


def start_backend(setting: Setting, views: list[dict]) -> BackendClient:
    """A backend started with ``setting`` and warmed up by a 2-iteration fit."""
    env = {k: v for k, v in os.environ.items()
           if k not in threads.WAIT_VARIABLES + threads.COUNT_VARIABLES}
    env.update(setting.environment)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = default_backend_command(sys.executable) + ["--threads", str(setting.threads)]
    client = BackendClient(command, env=env, timeout=600)
    client.start()
    run_fit(client, views, {"iterations": 2, "device": "cpu"}, 0.0)
    return client


def measure(client: BackendClient, load: str, views: list[dict], args) -> dict:
    """One fit on a running backend beside ``load``."""
    busy = start_load(load)
    try:
        time.sleep(0.5)  # let the scheduler see the busy processes
        ui = args.ui_frame_ms / 1e3 if load == "ui" else 0.0
        cpu = process_cpu_seconds(client.pid)
        done = run_fit(client, views, {"iterations": args.iterations, "device": "cpu"}, ui)
        cpu = process_cpu_seconds(client.pid) - cpu
    finally:
        stop_load(busy)
    return {"wall": done["wall"], "fit": done["metrics"]["timing"]["total"], "cpu": cpu,
            "iou": done["metrics"]["mean_fit_iou"], "updates": done["updates"]}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc (Linux), else NaN."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_table(settings: list[Setting], loads: list[str], results: dict,
                reported: dict) -> None:
    """Median wall time (its ratio to the setting's idle time) and backend CPU time per
    setting and load, then each setting's idle time against one thread's."""
    print("\n| setting | reported threads | " + " | ".join(loads) + " |")
    print("|---|---|" + "---|" * len(loads))
    idle = {}
    for setting in settings:
        cells = []
        for load in loads:
            rows = results.get((setting.name, load), [])
            if not rows:
                cells.append("-")
                continue
            wall = statistics.median(r["wall"] for r in rows)
            cpu = statistics.median(r["cpu"] for r in rows)
            if load == "idle":
                idle[setting.name] = wall
            ratio = f" ({wall / idle[setting.name]:.2f}x)" if setting.name in idle and \
                load != "idle" else ""
            cells.append(f"{wall:.1f} s{ratio}, CPU {cpu:.1f} s")
        print(f"| {setting.name} | {reported[setting.name]} | " + " | ".join(cells) + " |")
    if "one-thread" in idle:
        print("\nidle wall time against one thread: " + ", ".join(
            f"{name} {wall / idle['one-thread']:.2f}x" for name, wall in idle.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=list(BUILT_IN), choices=list(BUILT_IN))
    parser.add_argument("--extra", nargs="*", default=[], type=parse_extra,
                        help="more settings: NAME=VAR=VALUE[,VAR=VALUE]:THREADS")
    parser.add_argument("--loads", nargs="+", default=["idle", "busy1", "busy2", "ui"],
                        choices=["idle", "busy1", "busy2", "ui"])
    parser.add_argument("--ui-frame-ms", type=float, default=4.0,
                        help="CPU milliseconds the mimicked UI spends per 60 Hz frame")
    args = parser.parse_args(argv)
    settings = [BUILT_IN[name] for name in args.settings] + args.extra
    # A terminated benchmark still stops its busy processes and backends (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    print(f"machine: {os.cpu_count()} logical CPUs, {threads.physical_cores()} physical cores, "
          f"{platform.processor() or platform.machine()}, {platform.system()}; load average "
          f"{os.getloadavg()[0]:.1f} at start; fit: 24+8 views {args.size}x{args.size}, "
          f"{args.iterations} iterations from the visual hull; UI frame {args.ui_frame_ms:g} ms "
          f"CPU at {UI_HZ:g} Hz", flush=True)
    views = fit_views(args.size)
    clients = {setting.name: start_backend(setting, views) for setting in settings}
    reported = {name: client.hello.get("threads") for name, client in clients.items()}
    results: dict = {}
    try:
        for repeat in range(args.repeats):  # interleaved, since the machine's load drifts
            order = settings[repeat % len(settings):] + settings[:repeat % len(settings)]
            for load in args.loads:
                for setting in order:
                    row = measure(clients[setting.name], load, views, args)
                    results.setdefault((setting.name, load), []).append(row)
                    print(f"  [{repeat + 1}/{args.repeats}] {setting.name:>12} {load:>5}: "
                          f"wall {row['wall']:6.1f} s (fit {row['fit']:6.1f} s, CPU "
                          f"{row['cpu']:6.1f} s), IoU {row['iou']:.3f}, {row['updates']} UI "
                          f"mesh updates, load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for client in clients.values():
            client.shutdown()
    print_table(settings, args.loads, results, reported)


if __name__ == "__main__":
    main()
