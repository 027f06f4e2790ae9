"""The backend's CPU threading policy (backend/core/threads.py) and its --threads option."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.core import threads
from backend.core.protocol import encode_frame, read_frame

REPO = Path(__file__).resolve().parent.parent


# -- choosing ---------------------------------------------------------------------------

def test_automatic_uses_the_physical_cores_and_passive_waiting():
    settings = threads.choose(0, environ={}, cores=6)
    assert (settings.count, settings.origin, settings.wait_policy) == (6, "automatic", "PASSIVE")
    assert settings.environment == {"OMP_NUM_THREADS": "6", "MKL_NUM_THREADS": "6",
                                    "OMP_WAIT_POLICY": "PASSIVE"}


def test_a_user_omp_num_threads_is_respected_when_automatic():
    settings = threads.choose(0, environ={"OMP_NUM_THREADS": "3"}, cores=6)
    assert (settings.count, settings.origin) == (3, "OMP_NUM_THREADS")


def test_an_explicit_request_wins_over_omp_num_threads():
    settings = threads.choose(2, environ={"OMP_NUM_THREADS": "3"}, cores=6)
    assert (settings.count, settings.origin) == (2, "requested")
    assert settings.environment["OMP_NUM_THREADS"] == "2"


def test_a_nested_omp_num_threads_list_gives_its_first_level():
    assert threads.choose(0, environ={"OMP_NUM_THREADS": "4,2"}, cores=6).count == 4


@pytest.mark.parametrize("value", ["zero", "0", "-2", "2.5"])
def test_an_unusable_omp_num_threads_is_an_error_that_names_it(value):
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS='{value}' is not a positive"):
        threads.choose(0, environ={"OMP_NUM_THREADS": value}, cores=2)


@pytest.mark.parametrize("requested", [-1, 1.5, True, "2"])
def test_a_bad_request_is_an_error(requested):
    with pytest.raises(ValueError, match="0 \\(automatic\\) or a positive integer"):
        threads.choose(requested, environ={}, cores=2)


@pytest.mark.parametrize(("environ", "reported"), [
    ({"OMP_WAIT_POLICY": "active"}, "ACTIVE"),
    ({"GOMP_SPINCOUNT": "10000"}, "GOMP_SPINCOUNT=10000"),
    ({"OMP_WAIT_POLICY": "passive", "KMP_BLOCKTIME": "0"}, "OMP_WAIT_POLICY=passive, "
                                                           "KMP_BLOCKTIME=0"),
])
def test_a_user_wait_setting_is_left_alone_and_reported(environ, reported):
    settings = threads.choose(0, environ=environ, cores=2)
    assert settings.wait_policy == reported
    assert not set(settings.environment) & set(threads.WAIT_VARIABLES)


# -- applying ---------------------------------------------------------------------------

def test_apply_writes_the_environment_the_openmp_runtime_reads():
    environ = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MKL_NUM_THREADS": "1"}
    # torch is loaded in this process: applying what is already there is allowed...
    assert threads.apply(1, environ).count == 1
    # ...changing it is not, since the runtime has read the environment already.
    with pytest.raises(RuntimeError, match="before torch is imported"):
        threads.apply(3, environ)
    assert environ["OMP_NUM_THREADS"] == "1"


def test_apply_before_torch_sets_the_threads_torch_uses():
    code = ("import os; from backend.core import threads; s = threads.apply(1); import torch; "
            "print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=clean_environment(), cwd=REPO, timeout=120, check=True).stdout
    assert out.split() == ["1", "PASSIVE"]


def test_the_tests_run_with_the_policy_applied():
    assert torch.get_num_threads() == threads.choose().count
    assert threads.in_effect(torch.get_num_threads())["wait_policy"] != "default"


def test_in_effect_reports_the_runtime_default_when_nothing_is_set():
    assert threads.in_effect(4, environ={}) == {"count": 4, "wait_policy": "default"}


# -- counting physical cores -------------------------------------------------------------

def fake_sysfs(root: Path, topology: dict[int, tuple[int, int]]) -> Path:
    """/sys/devices/system/cpu with cpu -> (package, core)."""
    for cpu, (package, core) in topology.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


def test_hyper_threads_of_one_core_count_once(tmp_path):
    # 2 packages x 2 cores x 2 hyper-threads; core ids repeat across packages.
    topology = {cpu: (cpu // 4, (cpu // 2) % 2) for cpu in range(8)}
    root = fake_sysfs(tmp_path, topology)
    assert threads._linux_sys_cores(list(range(8)), root) == 4
    assert threads._linux_sys_cores([0, 1, 2], root) == 2  # the affinity mask limits it


def test_an_unreadable_sysfs_gives_no_answer(tmp_path):
    assert threads._linux_sys_cores([0], tmp_path) is None


@pytest.mark.parametrize(("files", "limit"), [
    ({"cpu.max": "250000 100000\n"}, 3),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_a_container_cpu_quota_limits_the_cores(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads._cgroup_cpu_limit(tmp_path) == limit


CPUINFO = "".join(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\n\n"
                  for cpu in range(4))


def test_cpuinfo_counts_distinct_cores_of_the_allowed_processors():
    assert threads._cpuinfo_cores(CPUINFO, [0, 1, 2, 3]) == 2
    assert threads._cpuinfo_cores(CPUINFO, [0]) == 1
    assert threads._cpuinfo_cores("processor\t: 0\nBogoMIPS\t: 50\n", [0]) is None


def test_windows_processor_core_records_are_counted():
    def record(relationship: int, pointer_size: int) -> bytes:
        return ((1).to_bytes(pointer_size, "little") + relationship.to_bytes(4, "little")
                + bytes(pointer_size - 4 + 16))

    # Cores (0), a cache (2) and a package (3), as 64-bit and 32-bit records.
    for size in (8, 4):
        raw = b"".join(record(r, size) for r in (0, 2, 0, 3, 0))
        assert threads.count_core_records(raw, size) == 3
    assert threads.count_core_records(b"\0" * 31, 8) is None


def test_this_machine_has_between_one_and_cpu_count_physical_cores():
    assert 1 <= threads.physical_cores() <= os.cpu_count()


# -- the backend process -----------------------------------------------------------------

def clean_environment(**extra: str) -> dict:
    """This environment without the thread variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in threads.WAIT_VARIABLES + threads.COUNT_VARIABLES}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def backend_hello(args: list[str], env: dict) -> dict:
    """Start ``python -m backend serve ARGS``, shut it down; its first frame other than
    a heartbeat (sent while torch loads on a busy machine)."""
    result = subprocess.run([sys.executable, "-m", "backend", "serve", *args],
                            input=encode_frame({"type": "shutdown"}), capture_output=True,
                            env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    stream = io.BytesIO(result.stdout)
    while (frame := read_frame(stream))["type"] == "heartbeat":
        pass
    return frame


def test_serve_uses_the_requested_threads_and_reports_them():
    hello = backend_hello(["--threads", "1"], clean_environment())
    assert hello["type"] == "hello"
    assert hello["threads"] == {"count": 1, "wait_policy": "PASSIVE"}


def test_serve_reports_a_user_wait_policy():
    hello = backend_hello([], clean_environment(OMP_WAIT_POLICY="active"))
    assert hello["threads"] == {"count": threads.physical_cores(), "wait_policy": "ACTIVE"}


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--threads", "-2"], {}, "0 (automatic) or a positive integer, got -2"),
    ([], {"OMP_NUM_THREADS": "many"}, "OMP_NUM_THREADS='many' is not a positive"),
])
def test_serve_refuses_a_bad_thread_count(args, env, message):
    result = subprocess.run([sys.executable, "-m", "backend", "serve", *args],
                            capture_output=True, text=True, env=clean_environment(**env),
                            cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""
