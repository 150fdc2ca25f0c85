"""The runtime: CPU features, the global thread pool, fork-safety, the GIL, the error boundary."""

from __future__ import annotations

import errno
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ferrolm
from ferrolm import _core

# ---------------------------------------------------------------- CPU features

X86_FLAGS = {
    # ferrolm flag -> /proc/cpuinfo flag
    "sse4_2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi2": "bmi2",
    "avx_vnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
}
ARM_FLAGS = {"neon": "asimd", "dotprod": "asimddp", "i8mm": "i8mm", "bf16": "bf16", "sve": "sve"}


def test_cpu_features_has_every_flag_as_bool() -> None:
    f = ferrolm.cpu_features()
    assert set(X86_FLAGS) | set(ARM_FLAGS) <= set(f)
    assert all(isinstance(v, bool) for v in f.values())
    f["avx2"] = not f["avx2"]  # callers get their own copy
    assert ferrolm.cpu_features() != f


def _cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_cpu_features_agree_with_the_kernel() -> None:
    f = ferrolm.cpu_features()
    kernel = _cpuinfo_flags()
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        table, other = X86_FLAGS, ARM_FLAGS
    elif machine in ("aarch64", "arm64"):
        table, other = ARM_FLAGS, X86_FLAGS
    else:
        pytest.skip(f"no flag table for {machine}")
    for ours, theirs in table.items():
        assert f[ours] == (theirs in kernel), ours
    assert not any(f[k] for k in other)


# ---------------------------------------------------------------- threads


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "FERROLM_NUM_THREADS"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_default_threads_is_the_usable_core_count() -> None:
    r = _run_python(
        "import ferrolm; print(ferrolm.get_num_threads(), ferrolm._core._pool_workers())"
    )
    assert r.returncode == 0, r.stderr
    n, workers = map(int, r.stdout.split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= n <= (usable or 1)
    assert workers == n


def test_env_var_sets_the_default() -> None:
    r = _run_python(
        "import ferrolm; print(ferrolm.get_num_threads(), ferrolm._core._pool_workers())",
        FERROLM_NUM_THREADS="3",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "3"]


@pytest.mark.parametrize("bad", ["zero", "0", "-2", "1.5", "100000"])
def test_malformed_env_var_is_a_clear_value_error(bad: str) -> None:
    r = _run_python(
        "import ferrolm\n"
        "try:\n    ferrolm.get_num_threads()\n"
        "except ValueError as e:\n    print('ValueError:', e)\n",
        FERROLM_NUM_THREADS=bad,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ValueError:") and "FERROLM_NUM_THREADS" in r.stdout, r.stdout


@pytest.mark.usefixtures("restore_threads")
def test_set_num_threads_resizes_the_pool() -> None:
    for n in (3, 1, 2):
        ferrolm.set_num_threads(n)
        assert ferrolm.get_num_threads() == n
        assert _core._pool_workers() == n


@pytest.mark.usefixtures("restore_threads")
def test_set_num_threads_rejects_bad_values() -> None:
    ferrolm.set_num_threads(2)
    for bad in (0, -1, 1025, 2**70):
        with pytest.raises((ValueError, OverflowError)):
            ferrolm.set_num_threads(bad)
    for wrong in ("4", 2.0, None, True):
        with pytest.raises(TypeError):
            ferrolm.set_num_threads(wrong)  # type: ignore[arg-type]
    assert ferrolm.get_num_threads() == 2


@pytest.mark.usefixtures("restore_threads")
def test_shared_runtime_under_many_python_threads() -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(100):
                if j % 10 == 0:
                    ferrolm.set_num_threads(1 + (i + j) % 3)
                assert 1 <= ferrolm.get_num_threads() <= 3
                assert 1 <= _core._pool_workers() <= 3
                assert "avx2" in ferrolm.cpu_features()
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


# ---------------------------------------------------------------- fork


def _wait_child(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} hung for {timeout} s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
@pytest.mark.usefixtures("restore_threads")
def test_pool_survives_os_fork() -> None:
    ferrolm.set_num_threads(2)
    assert _core._pool_workers() == 2  # warm pool in the parent
    for _ in range(20):
        pid = os.fork()
        if pid == 0:  # child
            try:
                ok = ferrolm.get_num_threads() == 2 and _core._pool_workers() == 2
                # and a grandchild, forked from a child whose pool is warm
                gpid = os.fork()
                if gpid == 0:
                    os._exit(0 if _core._pool_workers() == 2 else 3)
                _, status = os.waitpid(gpid, 0)
                ok = ok and os.waitstatus_to_exitcode(status) == 0
            finally:
                os._exit(0 if ok else 1)
        assert _wait_child(pid) == 0
    assert _core._pool_workers() == 2  # the parent's pool is untouched


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_pool_works_in_multiprocessing_children(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available on this platform")
    _core._pool_workers()  # warm pool before the children start
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(_core._pool_workers) for _ in range(4)]
        counts = [r.get(timeout=30) for r in results]
    assert all(c >= 1 for c in counts), counts


# ---------------------------------------------------------------- GIL


def test_long_calls_release_the_gil() -> None:
    span: dict[str, float] = {}

    def long_call() -> None:
        span["start"] = time.monotonic()
        _core._sleep_detached(1.0)
        span["end"] = time.monotonic()

    t = threading.Thread(target=long_call)
    ticks: list[float] = []
    t.start()
    while t.is_alive():
        ticks.append(time.monotonic())
        time.sleep(0.005)
    t.join()
    # With the GIL held for the whole call, this thread could not have run in its middle.
    middle = [x for x in ticks if span["start"] + 0.3 < x < span["end"] - 0.3]
    assert middle, "no Python bytecode ran while the Rust call was in progress"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kind", "exc", "match"),
    [
        ("format", ferrolm.FormatError, "test.json: missing field `model`"),
        ("unsupported", ferrolm.FormatError, "unsupported normalizer `Precompiled`"),
        ("invalid", ValueError, "bad value"),
        ("type", TypeError, "expected a list of ints"),
        ("index", IndexError, "token id 99 out of range"),
        ("internal", ferrolm.InternalError, "broken invariant"),
        ("io", OSError, "disk on fire"),
    ],
)
def test_core_errors_map_to_specific_exceptions(kind: str, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match) as info:
        _core._fail_for_tests(kind)
    assert isinstance(info.value, Exception)


def test_io_errors_carry_errno_and_filename() -> None:
    with pytest.raises(FileNotFoundError) as nf:
        _core._fail_for_tests("not_found")
    assert nf.value.errno == errno.ENOENT
    assert nf.value.filename == "/nonexistent/ferrolm-test"
    with pytest.raises(PermissionError) as pe:
        _core._fail_for_tests("permission")
    assert pe.value.errno == errno.EACCES


def test_a_panic_in_a_worker_is_an_ordinary_exception() -> None:
    try:
        _core._fail_for_tests("panic")
    except Exception as e:  # the point: `except Exception` must catch it
        assert isinstance(e, ferrolm.InternalError)
        assert "deliberate panic in a worker" in str(e)
        assert type(e).__name__ != "PanicException"
    else:
        pytest.fail("no exception raised")
    # the runtime is still usable after the panic
    assert _core._pool_workers() >= 1


def test_bad_arguments_are_type_and_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown failure kind"):
        _core._fail_for_tests("nope")
    with pytest.raises(TypeError):
        _core._fail_for_tests(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 0 and 60"):
        _core._sleep_detached(-1.0)
