"""The main job, ``python -m fastnorm bench``, and the scripts of bench/: they run and report what they say
(behaviour, not timings)."""
import json
import os
import pathlib
import select
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnorm
from fastnorm import _bench, _bench_pipeline
from fastnorm.__main__ import main

SMALL = "batch_norm eval NC (256, 512)"  # one small case, for --filter
BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
TIMING_KEYS = [f"{impl}_{q}" for impl in ("fastnorm", "numpy", "copy") for q in ("s", "p25_s", "p75_s")]


def package_env():
    """The environment of a child Python that imports this fastnorm (installed or built in place)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(fastnorm.__file__)),
                                                      env.get("PYTHONPATH")]))
    return env


def test_bench_rows_cover_the_filtered_cases():
    lines = []
    report = _bench.run(thread_counts=[1], repeat=3, name_filter="(256, 512)", print_fn=lines.append)
    rows = report["sections"]["kernels"]
    assert list(report["sections"]) == ["kernels"]  # the filter names no other section
    assert [r["case"] for r in rows] == ["batch_norm train NC (256, 512)", SMALL]
    for row in rows:
        assert row["threads"] == 1 and row["shape"] == [256, 512] and row["moved_bytes"] == 2 * 256 * 512 * 4
        for impl in ("fastnorm", "numpy", "copy") + (("torch",) if _bench.torch is not None else ()):
            assert 0 < row[f"{impl}_p25_s"] <= row[f"{impl}_s"] <= row[f"{impl}_p75_s"]
        assert np.isclose(row["gbps"], row["moved_bytes"] / row["fastnorm_s"] / 1e9)
        assert 0 < row["copy_fraction"] <= 1
        assert row["faster_than_copy"] == (row["fastnorm_s"] < row["copy_s"])
    assert lines[0].startswith("fastnorm bench: float32, median of 3 calls")
    assert any(line.startswith(SMALL) for line in lines)


def test_fused_section_times_each_variant_of_a_case():
    lines = []
    report = _bench.run(thread_counts=[1], repeat=1, name_filter="residual= 4096", print_fn=lines.append)
    (row,) = report["sections"]["fused"]
    assert row["case"] == "layer_norm residual= 4096x768" and row["baseline"] == "unfused"
    variants = {"fastnorm", "unfused"} | ({"onnxruntime"} if _bench._optional_module("onnxruntime") else set())
    assert {k[:-2] for k in row if k.endswith("_s")} == variants and all(row[f"{k}_s"] > 0 for k in variants)
    assert any(line.startswith("layer_norm residual= 4096x768") and "unfused" in line for line in lines)


def test_of_copy_is_at_most_100_percent_and_says_when_fastnorm_beat_the_copy(monkeypatch):
    # A copy slower than any call: fastnorm is then the floor of its bytes, at 100%, flagged.
    monkeypatch.setattr(_bench, "copy_of", lambda moved, n: lambda: time.sleep(0.02))
    lines = []
    (row,) = _bench.run(thread_counts=[1], repeat=1, name_filter=SMALL, print_fn=lines.append)["sections"]["kernels"]
    assert row["faster_than_copy"] and row["copy_fraction"] == 1.0 and row["copy_s"] > row["fastnorm_s"]
    assert next(line for line in lines if line.startswith(SMALL)).endswith("100%*")
    assert lines[-1].startswith("* faster than the copy of its bytes")


def test_bench_command_line_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--threads", "1", "--repeat", "3", "--filter", SMALL, "--hot", "--json", str(out)]
    plot = None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        plot = tmp_path / "bench.png"
        argv += ["--plot", str(plot)]
    assert main(argv) == 0
    assert SMALL in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["setup"]["fastnorm"] == fastnorm.__version__
    assert report["setup"]["repeat"] == 3 and report["setup"]["thread_counts"] == [1]
    assert report["setup"]["caches"] == "hot"
    (row,) = report["sections"]["kernels"]
    assert row["case"] == SMALL and row["threads"] == 1
    assert all(row[key] > 0 for key in TIMING_KEYS + ["gbps"])
    assert ("torch_s" in row) == (_bench.torch is not None)
    assert row["copy_fraction"] <= 1
    if plot is not None:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastnorm {fastnorm.__version__}"


@pytest.mark.parametrize("argv, says", [
    (["bench", "--threads", "a,0"], "--threads: expected comma-separated positive integers"),
    (["bench", "--threads", "1,0"], "--threads: expected comma-separated positive integers"),
    (["bench", "--threads", ""], "--threads: expected comma-separated positive integers"),
    (["bench", "--repeat", "-1"], "--repeat: expected a positive integer"),
    (["bench", "--repeat", "x"], "--repeat: expected a positive integer"),
    (["bench", "--json", "/nonexistent-dir/bench.json"], "--json: cannot write"),
    (["bench", "--plot", "{tmp}"], "--plot: cannot write"),
    (["demo", "--epochs", "0"], "--epochs: expected a positive integer"),
])
def test_argument_errors_exit_2_with_a_message(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.startswith("usage:") and "Traceback" not in err


def test_plot_without_matplotlib_is_an_argument_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--filter", SMALL, "--plot", str(tmp_path / "bench.png")])
    assert exit.value.code == 2
    assert "--plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err


def test_rows_reach_a_pipe_while_the_command_runs(tmp_path):
    # The JSON goes to a FIFO, which the command opens after its table and which blocks it until this
    # test reads: a row that came through the pipe before then was flushed as it was printed.
    fifo = tmp_path / "bench.json"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "fastnorm", "bench", "--threads", "1", "--repeat", "1",
                             "--filter", SMALL, "--json", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=package_env())
    try:
        seen, deadline = b"", time.monotonic() + 120
        while SMALL.encode() not in seen and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break  # the command ended
                seen += chunk
        assert SMALL.encode() in seen, (seen, proc.stderr.read() if proc.poll() is not None else "")
        assert proc.poll() is None  # still running: waiting to write its JSON
        with open(fifo) as f:
            assert json.load(f)["sections"]["kernels"][0]["case"] == SMALL
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # unblock its open(), if there
            proc.kill()
            proc.wait()


def test_info_command_shows_the_build(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "openmp" in out and "simd" in out


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_copy_copies(rng, stream):
    from fastnorm import _kernels

    previous = _kernels.set_stream_bytes(0 if stream else 1 << 62)
    try:
        data = rng.integers(0, 256, size=100_016, dtype=np.uint8)
        for n in (1, 2, 3):
            for size in (0, 1, 7, 64, 1000, 100_000):
                for offset in (0, 1, 4, 12):  # unaligned ends, and a destination off 4-byte alignment
                    src = data[offset:offset + size]
                    dst = np.zeros(size + 16, np.uint8)[offset % 16:offset % 16 + size]
                    _kernels.parallel_copy(src, dst, n)
                    assert np.array_equal(dst, src), (n, size, offset)
    finally:
        _kernels.set_stream_bytes(previous)


def copy_of_bench(tmp_path):
    """bench/ copied next to a src/fastnorm that cannot be imported: a script that puts the checkout's
    src/ first on the path fails there, one that imports the package Python finds runs."""
    shutil.copytree(BENCH, tmp_path / "bench")
    (tmp_path / "src" / "fastnorm").mkdir(parents=True)
    (tmp_path / "src" / "fastnorm" / "__init__.py").write_text("raise ImportError('the checkout, not the package')\n")
    return tmp_path / "bench"


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not beside the tests")
@pytest.mark.parametrize("script, args", [
    ("floor.py", ["--filter", SMALL, "--rounds", "1"]),
    ("dask_moments.py", ["1000"]),
    ("pipeline.py", ["--repeat", "1", "--shape", "64,32"]),
])
def test_bench_scripts_run_on_the_package_python_imports(tmp_path, script, args):
    if script == "floor.py" and _bench.torch is None:
        pytest.skip("bench/floor.py compares with PyTorch")
    if script == "dask_moments.py":
        pytest.importorskip("dask.array")
    bench = copy_of_bench(tmp_path)
    done = subprocess.run([sys.executable, str(bench / script)] + args, capture_output=True, text=True,
                          env=package_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    expected = {"floor.py": SMALL, "dask_moments.py": "fastnorm.dask.moments", "pipeline.py": "pipeline step"}
    assert expected[script] in done.stdout


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not beside the tests")
def test_pytest_benchmark_cases_record_threads_and_bandwidth_and_fit_a_terminal(tmp_path):
    pytest.importorskip("pytest_benchmark")
    out = tmp_path / "benchmark.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(copy_of_bench(tmp_path)),
         "-k", "bn and eval-NC-256x512", "--benchmark-min-rounds=3", "--benchmark-max-time=0",
         "--benchmark-warmup=off", f"--benchmark-json={out}"],
        capture_output=True, text=True, env=package_env(), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    benchmarks = json.loads(out.read_text())["benchmarks"]
    assert {b["name"].split("[")[1].split("-")[0] for b in benchmarks} >= {"fastnorm", "numpy"}
    for b in benchmarks:
        info = b["extra_info"]
        assert info["threads"] == fastnorm.get_num_threads() and info["moved_bytes"] == 2 * 256 * 512 * 4
        assert np.isclose(info["gbps"], info["moved_bytes"] / b["stats"]["median"] / 1e9)
    table = [line for line in done.stdout.splitlines() if "eval-NC-256x512" in line or line.startswith("Name")]
    assert table and max(len(line) for line in table) <= 100


def test_pipeline_bench_times_every_variant():
    lines = []
    rows = _bench_pipeline.run_pipeline(nthreads=2, repeat=2, shape=(64, 32), print_fn=lines.append)
    names = ["numpy"] + (["torch"] if _bench.torch is not None else []) + (
        ["onnxruntime", "onnxruntime no spin"] if _bench._optional_module("onnxruntime") else [])
    medians = {(r["matmul"], r["part"], r["threads"]): r["median_s"] for r in rows}
    assert {name for name, _, _ in medians} >= set(names)
    assert all(medians[(name, part, n)] > 0 for name in names for part in ("step", "alone") for n in (1, 2))
    assert medians[("none", "alone", 1)] > 0 and medians[("none", "alone", 2)] > 0
    assert all(medians[(name, part, n)] > 0 for name in names for part in ("calls in step", "matmuls in step")
               for n in (1, 2))
    assert sum(line.startswith("none (alone only)") for line in lines) == 1
    apart = [i for i, line in enumerate(lines) if line.startswith("the step, timed apart")]
    assert len(apart) == 1 and [line.split()[0] for line in lines[apart[0] + 1:]] == [n.split()[0] for n in names]
    assert lines[0].lstrip().startswith("pipeline step h = x @ W1; h = bn(h); h = ln(h); y = h @ W2 on (64, 32)")
    assert any(line.startswith("numpy") for line in lines)
