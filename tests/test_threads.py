"""Threads: a forked child finishes its calls with the parent's bits, counts are bounded by the CPUs
available, idle workers give their cores back, threadpoolctl and set_num_threads act on one setting, and
threads() / no_grad() belong to their context (Python thread or asyncio task)."""
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import fastnorm
from fastnorm import _kernels, _threads

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")


def _os_threads():
    return len(os.listdir("/proc/self/task"))


def _results():
    """Forward and backward of each family on inputs big enough for every thread."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((512, 768), dtype=np.float32)
    x4 = (3 + rng.standard_normal((8, 64, 32, 32))).astype(np.float32)
    y, mean, rstd = fastnorm.layer_norm(x, 768, return_stats=True)
    z, bmean, invstd = fastnorm.batch_norm(x4, training=True, return_stats=True)
    return [y, fastnorm.layer_norm_backward(x, x, 768, mean, rstd)[0], fastnorm.rms_norm(x, 768),
            z, fastnorm.batch_norm_backward(x4, x4, bmean, invstd)[0], fastnorm.batch_norm(x4, training=True,
                                                                                          channel_axis=-1),
            fastnorm.group_norm(x4, 8), fastnorm.instance_norm(x4), fastnorm.moments(x4, (0, 2, 3))[1]]


def _fork(child, timeout=120):
    """Run ``child()`` (its return value: the exit status) in a forked child; the child's exit status,
    or a failure if it has not finished within ``timeout`` seconds (the child is then killed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork() of a threaded process
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            signal.alarm(timeout + 10)  # never outlive the test
            status = child()
        finally:
            os._exit(status)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish its calls within {timeout} s")


@needs_fork
@linux_only
def test_a_forked_child_finishes_every_call_with_the_parents_bits(uncapped_threads):
    fastnorm.set_num_threads(2)
    try:
        expected = _results()  # the parent's workers run

        def child():
            same = all(np.array_equal(a, b) for a, b in zip(_results(), expected))
            # the child runs with its own workers, not one thread
            threaded = not _kernels.own_runtime() or _os_threads() > 1
            return 0 if same and threaded else 3
        assert _fork(child) == 0
        assert all(np.array_equal(a, b) for a, b in zip(_results(), expected))  # and the parent still does
    finally:
        fastnorm.set_num_threads(None)


def _pool_task(_):
    return [a.tobytes() for a in _results()]


@needs_fork
def test_a_fork_pool_finishes_every_call_with_the_parents_bits(uncapped_threads):
    fastnorm.set_num_threads(2)
    try:
        expected = [a.tobytes() for a in _results()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with multiprocessing.get_context("fork").Pool(2) as pool:
                out = pool.map_async(_pool_task, range(4)).get(timeout=120)
        assert out == [expected] * 4
    finally:
        fastnorm.set_num_threads(None)


@needs_fork
def test_fork_while_another_thread_runs_kernels(uncapped_threads):
    """fork() waits for the parallel region another Python thread is running; the child is sound."""
    x = np.random.default_rng(3).standard_normal((512, 768), dtype=np.float32)
    expected = fastnorm.layer_norm(x, 768)
    stop = threading.Event()
    wrong = []

    def work():
        with fastnorm.threads(2):
            while not stop.is_set():
                if not np.array_equal(fastnorm.layer_norm(x, 768), expected):
                    wrong.append(1)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        for _ in range(5):
            def child():
                with fastnorm.threads(2):
                    return 0 if np.array_equal(fastnorm.layer_norm(x, 768), expected) else 3
            assert _fork(child) == 0
    finally:
        stop.set()
        worker.join()
    assert not wrong


@linux_only
def test_counts_are_bounded_by_the_cpus_available():
    cpus = _threads._cap()  # the CPUs available (1 in a build without OpenMP)
    x = np.ones((2 * cpus, 1 << 15), np.float32)  # work for every thread asked for
    fastnorm.set_num_threads(10**6)
    try:
        assert fastnorm.get_num_threads() == cpus
        with fastnorm.threads(10**30):
            assert fastnorm.get_num_threads() == cpus
            before = _os_threads()
            fastnorm.layer_norm(x, x.shape[-1])
            assert _os_threads() <= before + cpus - 1
    finally:
        fastnorm.set_num_threads(None)
    assert fastnorm.get_num_threads() <= cpus


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_the_default_count_follows_the_cpu_affinity_and_omp_num_threads():
    cpu = min(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}}); import fastnorm; print(fastnorm.get_num_threads())"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "1", run.stderr
    code = "import fastnorm, os; print(fastnorm.get_num_threads(), len(os.sched_getaffinity(0)))"
    run = subprocess.run([sys.executable, "-c", code], env=dict(env, OMP_NUM_THREADS="1,2"), capture_output=True,
                         text=True, timeout=120)
    assert run.stdout.split()[0] == "1", run.stderr


@pytest.mark.parametrize("v2, v1, cpus", [("200000 100000\n", None, 2), ("150000 100000\n", None, 2),
                                          ("max 100000\n", None, None), (None, ("50000", "100000"), 1),
                                          (None, ("-1", "100000"), None), (None, None, None)])
def test_a_cgroup_cpu_quota_bounds_the_count(tmp_path, monkeypatch, v2, v1, cpus):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    assert _threads._cgroup_cpus(str(tmp_path)) == cpus
    monkeypatch.setattr(_threads, "_cgroup_cpus", lambda: 1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fastnorm.set_num_threads(None)  # reads the quota again
    try:
        assert _threads.available_cpus() == 1
        assert fastnorm.get_num_threads() == 1
        with fastnorm.threads(2):
            assert fastnorm.get_num_threads() == 1
    finally:
        monkeypatch.undo()
        fastnorm.set_num_threads(None)


@linux_only
@pytest.mark.skipif(not _kernels.own_runtime(), reason="fastnorm's own pool (gcc builds)")
def test_idle_workers_give_their_cores_back(uncapped_threads):
    """After a call, the workers wait for the next one briefly, then sleep: over 20 pauses of 30 ms
    between calls they use a few milliseconds of CPU (a worker that spun through the pauses: 600)."""
    x = np.random.default_rng(0).standard_normal((512, 768), dtype=np.float32)

    def workers_cpu_seconds():
        total = 0
        for tid in _workers():
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    with fastnorm.threads(2):
        fastnorm.layer_norm(x, 768)
        before = workers_cpu_seconds()
        for _ in range(20):
            fastnorm.layer_norm(x, 768)
            time.sleep(0.03)
    assert workers_cpu_seconds() - before < 0.1


def _workers():
    """The thread ids of the pool's workers."""
    tids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == "fastnorm":
                    tids.append(int(tid))
        except OSError:
            continue
    return tids


_MOVES_OFF_THE_CALLERS_CPU = """
import os
import numpy as np
import fastnorm

x = np.random.default_rng(3).standard_normal((4096, 768), dtype=np.float32)
with fastnorm.threads(1):
    expected = fastnorm.layer_norm(x, 768)
allowed = os.sched_getaffinity(0)
cpu = min(allowed)
with fastnorm.threads(2):
    fastnorm.layer_norm(x, 768)  # the worker exists
    (worker,) = [int(t) for t in os.listdir("/proc/self/task")
                 if open(f"/proc/self/task/{t}/comm").read().strip() == "fastnorm"]
    os.sched_setaffinity(0, {cpu})  # the caller (this thread only) runs on cpu...
    os.sched_setaffinity(worker, {cpu})  # ...and so does the worker, then free to go anywhere again
    os.sched_setaffinity(worker, allowed)
    for _ in range(20):
        np.testing.assert_array_equal(fastnorm.layer_norm(x, 768), expected)
assert os.sched_getaffinity(worker) == allowed
with open(f"/proc/self/task/{worker}/stat") as f:
    last_cpu = int(f.read().rsplit(")", 1)[1].split()[36])  # field 39: the CPU it last ran on
assert last_cpu != cpu, last_cpu
"""


@linux_only
@pytest.mark.skipif(not _kernels.own_runtime(), reason="fastnorm's own pool (gcc builds)")
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to choose from")
def test_a_worker_on_the_callers_cpu_moves_and_keeps_its_mask():
    """A worker found on the caller's CPU moves to another and gets its whole affinity mask back; the
    results keep their bits.  A process that spins on the other CPUs (as another library's idle threads
    do) makes the scheduler wake the worker on the caller's CPU.  In a process of its own: one worker."""
    allowed = os.sched_getaffinity(0)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, allowed - {min(allowed)})
        run = subprocess.run([sys.executable, "-c", _MOVES_OFF_THE_CALLERS_CPU], capture_output=True, text=True,
                             timeout=120)
    finally:
        spinner.kill()
        spinner.wait()
    assert run.returncode == 0, run.stderr


def test_threadpoolctl_and_set_num_threads_act_on_one_setting(uncapped_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    two, three = min(2, _threads._cap()), min(3, _threads._cap())  # 1 in a build without OpenMP

    def listed():
        ours = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "fastnorm"]
        assert len(ours) == 1 and ours[0]["user_api"] == "openmp" and ours[0]["version"] == fastnorm.__version__
        return ours[0]["num_threads"]

    fastnorm.set_num_threads(2)
    try:
        assert listed() == two
        with threadpoolctl.threadpool_limits(1):
            assert fastnorm.get_num_threads() == 1 == listed()
            assert _threads.threads_for(1 << 24) == 1
            with fastnorm.threads(2):  # the innermost setting of the context wins
                assert fastnorm.get_num_threads() == two
        assert fastnorm.get_num_threads() == two
        with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
            assert fastnorm.get_num_threads() == 1
        with threadpoolctl.threadpool_limits(limits=10**6):  # bounded as set_num_threads is
            assert fastnorm.get_num_threads() == _threads._cap()
        with threadpoolctl.threadpool_limits(1):
            fastnorm.set_num_threads(3)
            assert listed() == three
        assert fastnorm.get_num_threads() == two  # threadpool_limits restores what it found
    finally:
        fastnorm.set_num_threads(None)


def test_no_grad_and_threads_stay_in_their_asyncio_task(uncapped_threads):
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    fastnorm.set_num_threads(2)

    async def inference(entered, done):
        with fastnorm.no_grad(), fastnorm.threads(1):
            entered.set()
            await done.wait()  # the other task runs here
            return fastnorm.get_num_threads()

    async def training(entered, done):
        await entered.wait()
        layer = fastnorm.LayerNorm(8)
        layer(x)
        try:
            return layer.backward(np.ones_like(x)), fastnorm.get_num_threads()
        finally:
            done.set()

    async def both():
        entered, done = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(inference(entered, done), training(entered, done))

    try:
        inner, (dx, n) = asyncio.run(both())
    finally:
        fastnorm.set_num_threads(None)
    assert inner == 1
    assert dx.shape == x.shape  # the forward kept its input: no_grad() of the other task did not reach it
    assert n == min(2, _threads._cap())


def test_no_grad_and_threads_belong_to_their_python_thread(uncapped_threads):
    seen = []
    with fastnorm.no_grad(), fastnorm.threads(1):
        thread = threading.Thread(
            target=lambda: seen.append((fastnorm.layers._keeps_grad(), fastnorm.get_num_threads())))
        thread.start()
        thread.join()
    assert seen == [(True, _kernels.get_num_threads())]


def test_threads_blocks_do_not_read_the_cgroup_files(monkeypatch):
    """The quota is read at import and by set_num_threads; a threads() block only reads the affinity, so
    that wrapping each call in one costs microseconds, not a file read."""
    reads = []
    monkeypatch.setattr(_threads, "_cgroup_cpus", lambda: reads.append(1))
    for n in (1, 2, 3):
        with fastnorm.threads(n):
            fastnorm.get_num_threads()
    assert reads == []
    fastnorm.set_num_threads(None)
    assert reads == [1]
    monkeypatch.undo()
    fastnorm.set_num_threads(None)
