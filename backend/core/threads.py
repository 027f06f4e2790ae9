"""How many CPU threads the backend uses and how they wait: chosen before torch starts.

torch's CPU kernels run on an OpenMP thread team (GNU libgomp on Linux, LLVM or
Intel OpenMP elsewhere), and a fit runs thousands of small parallel regions. By
default a thread that reaches a barrier first spins for milliseconds; when another
process holds a core, the spinning thread burns the time slice that the thread it
waits for needs, and a 12 s fit takes 74-235 s beside a single busy process
(docs/benchmarks.md, "Contention"). The OpenMP runtime reads its settings from the
environment once, when torch loads it, so `apply` must run before torch is imported:
``python -m backend serve`` (backend/__main__.py), the tests (tests/conftest.py) and
the benchmarks call it first thing.

The policy, measured in docs/benchmarks.md:
- threads: what ``--threads N`` / the add-on's "CPU Threads" asks for, else
  ``OMP_NUM_THREADS`` when the user set it, else all physical cores (hyper-threads
  share a core's arithmetic units, so a second thread per core mostly adds barrier
  waits; not measured here, the project's 2-core machine has none);
- waiting: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once instead of spinning),
  unless the user set any of the variables that control waiting.

Standard library only: the add-on imports this module too.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

# Variables that control how OpenMP threads wait: GNU libgomp reads GOMP_SPINCOUNT,
# LLVM and Intel OpenMP KMP_BLOCKTIME, all of them OMP_WAIT_POLICY. A user who set
# any of them chose how to wait, and the backend leaves all of them alone.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
WAIT_POLICY = "PASSIVE"
COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadSettings:
    """The backend's CPU threading.

    count: threads of torch's intra-op pool (>= 1).
    wait_policy: how idle threads wait, as the environment states it: "PASSIVE",
        "ACTIVE", or e.g. "GOMP_SPINCOUNT=10000" for a user's own variables.
    origin: where the count came from: "automatic" (physical cores), "requested"
        (``--threads``) or "OMP_NUM_THREADS" (the user's environment).
    environment: the variables to set before torch loads, name -> value.
    """

    count: int
    wait_policy: str
    origin: str
    environment: dict[str, str]


def choose(requested: int = 0, environ: Mapping[str, str] | None = None,
           cores: int | None = None) -> ThreadSettings:
    """The settings for a backend asked for ``requested`` threads (0 = automatic).

    environ: the environment the backend starts with (default os.environ); explicit
    ``OMP_NUM_THREADS`` and wait variables in it are respected. cores: the physical
    cores to use when automatic (default `physical_cores()`). Pure apart from the
    defaults. Raises ValueError for a negative request or an unusable OMP_NUM_THREADS.
    """
    environ = os.environ if environ is None else environ
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"the thread count must be 0 (automatic) or a positive integer, "
                         f"got {requested!r}")
    if requested > 0:
        count, origin = requested, "requested"
    elif environ.get("OMP_NUM_THREADS", "").strip():
        count, origin = _parse_count(environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        count, origin = (physical_cores() if cores is None else cores), "automatic"
    environment = {name: str(count) for name in COUNT_VARIABLES}
    own_wait = _own_wait(environ)
    if own_wait:
        wait_policy = describe_wait(own_wait)
    else:
        wait_policy = WAIT_POLICY
        environment["OMP_WAIT_POLICY"] = WAIT_POLICY
    return ThreadSettings(count, wait_policy, origin, environment)


def apply(requested: int = 0, environ: MutableMapping[str, str] | None = None) -> ThreadSettings:
    """Choose the settings and put them into the environment (default os.environ) for
    the OpenMP runtime that torch loads. Call before torch is imported: raises
    RuntimeError when torch is already loaded and the settings would change."""
    environ = os.environ if environ is None else environ
    settings = choose(requested, environ)
    changes = {k: v for k, v in settings.environment.items() if environ.get(k) != v}
    if changes and "torch" in sys.modules:
        raise RuntimeError(
            "the backend's thread settings must be applied before torch is imported (its "
            f"OpenMP runtime has already read the environment); would set {changes}. Call "
            "backend.core.threads.apply() first thing in the program.")
    environ.update(changes)
    return settings


def in_effect(count: int, environ: Mapping[str, str] | None = None) -> dict:
    """What a running backend reports in its hello message: ``count`` (torch's
    get_num_threads()) and the wait policy its environment gave the OpenMP runtime
    ("default" where nothing was set: the runtime spins for a while)."""
    own = _own_wait(os.environ if environ is None else environ)
    return {"count": int(count), "wait_policy": describe_wait(own) if own else "default"}


def _own_wait(environ: Mapping[str, str]) -> dict[str, str]:
    """The wait variables set (non-empty) in ``environ``, name -> value."""
    return {name: environ[name] for name in WAIT_VARIABLES if environ.get(name, "").strip()}


def describe_wait(variables: Mapping[str, str]) -> str:
    """A wait policy as a short string: the OMP_WAIT_POLICY value in upper case when
    it is the only one set, else "NAME=value" pairs, e.g. "GOMP_SPINCOUNT=10000"."""
    if list(variables) == ["OMP_WAIT_POLICY"]:
        return variables["OMP_WAIT_POLICY"].strip().upper()
    return ", ".join(f"{name}={value.strip()}" for name, value in variables.items())


def _parse_count(text: str) -> int:
    """OMP_NUM_THREADS as one positive integer; OpenMP also allows a comma-separated
    list (one count per nesting level), of which the first is torch's."""
    first = text.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise ValueError(f"OMP_NUM_THREADS={text!r} is not a positive number of threads: set "
                         "it to e.g. 4, or unset it to use all physical cores")
    return int(first)


def physical_cores() -> int:
    """Physical cores this process may run on (at least 1).

    Linux: distinct (package, core) pairs of the CPUs in the affinity mask, from
    /sys or else /proc/cpuinfo, no more than a container's CPU quota; macOS: sysctl
    hw.physicalcpu; Windows: the processor cores GetLogicalProcessorInformation
    lists. Where none of these answers (another OS, a sandbox hiding /sys and /proc),
    the logical CPU count: the only portable figure, at worst one thread per
    hyper-thread.
    """
    system = platform.system()
    if system == "Linux":
        cpus = sorted(os.sched_getaffinity(0))
        count = _linux_sys_cores(cpus, Path("/sys/devices/system/cpu")) or _cpuinfo_cores(
            _read_text(Path("/proc/cpuinfo")), cpus)
        quota = _cgroup_cpu_limit(Path("/sys/fs/cgroup"))
        count = min(count, quota) if count and quota else count
    elif system == "Darwin":
        count = _sysctl_int("hw.physicalcpu")
    elif system == "Windows":
        count = _windows_cores()
    else:
        count = None
    return max(1, count or os.cpu_count() or 1)


def _linux_sys_cores(cpus: list[int], root: Path) -> int | None:
    """Distinct (package, core) ids of ``cpus`` under /sys/devices/system/cpu; None if
    any is unreadable."""
    cores = set()
    for cpu in cpus:
        topology = root / f"cpu{cpu}" / "topology"
        package = _read_text(topology / "physical_package_id")
        core = _read_text(topology / "core_id")
        if package is None or core is None:
            return None
        cores.add((package.strip(), core.strip()))
    return len(cores) or None


def _cgroup_cpu_limit(root: Path) -> int | None:
    """A container's CPU quota in whole CPUs (rounded up), from cgroup v2's cpu.max
    ("200000 100000") or v1's cfs_quota_us / cfs_period_us; None when unlimited."""
    text = _read_text(root / "cpu.max")
    if text is not None:
        quota, _, period = text.strip().partition(" ")
    else:
        quota = (_read_text(root / "cpu" / "cpu.cfs_quota_us") or "-1").strip()
        period = (_read_text(root / "cpu" / "cpu.cfs_period_us") or "100000").strip()
    if not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None  # "max", -1 (no quota) or unreadable
    return max(1, -(-int(quota) // int(period)))


def _cpuinfo_cores(text: str | None, cpus: list[int]) -> int | None:
    """Distinct ("physical id", "core id") of the listed processors in /proc/cpuinfo's
    text; None where it lacks them (some ARM kernels, containers)."""
    if not text:
        return None
    cores = set()
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        if "processor" not in fields or "core id" not in fields:
            return None
        if int(fields["processor"]) in cpus:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _sysctl_int(name: str) -> int | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                             timeout=5, check=True).stdout
        return int(out.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _windows_cores() -> int | None:
    """Records with Relationship == RelationProcessorCore (0) that
    GetLogicalProcessorInformation returns."""
    kernel32 = ctypes.WinDLL("kernel32")
    size = ctypes.c_ulong(0)
    kernel32.GetLogicalProcessorInformation(None, ctypes.byref(size))
    buffer = ctypes.create_string_buffer(size.value)
    if not size.value or not kernel32.GetLogicalProcessorInformation(buffer,
                                                                      ctypes.byref(size)):
        return None
    return count_core_records(buffer.raw[:size.value], ctypes.sizeof(ctypes.c_void_p))


def count_core_records(raw: bytes, pointer_size: int) -> int | None:
    """Processor-core records in a SYSTEM_LOGICAL_PROCESSOR_INFORMATION array: each is
    a ULONG_PTR mask, a 4-byte Relationship (0 = core), padding to 8-byte alignment,
    and a 16-byte union: 32 bytes on 64-bit Windows, 24 on 32-bit."""
    record = 2 * pointer_size + 16
    if not raw or len(raw) % record:
        return None
    count = sum(1 for start in range(0, len(raw), record)
                if int.from_bytes(raw[start + pointer_size:start + pointer_size + 4],
                                  "little") == 0)
    return count or None
