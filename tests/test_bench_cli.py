"""The main job, ``python -m fastnorm bench``, runs and reports what it says (behaviour, not timings)."""
import numpy as np

from fastnorm import _bench
from fastnorm.__main__ import main


def test_bench_rows_cover_the_filtered_cases():
    lines = []
    rows = _bench.run(thread_counts=[1], repeat=1, name_filter="(256, 512)", print_fn=lines.append)
    assert [r["case"] for r in rows] == ["batch_norm train NC (256, 512)", "batch_norm eval NC (256, 512)"]
    for row in rows:
        assert row["threads"] == 1
        assert row["fastnorm_s"] > 0 and row["numpy_s"] > 0
        assert np.isclose(row["gbps"], 2 * 256 * 512 * 4 / row["fastnorm_s"] / 1e9)
    assert lines[0].startswith("fastnorm bench: float32, median of 1 calls")
    assert lines[1].startswith("statistics passes: ")
    assert any(line.startswith("batch_norm eval NC (256, 512)") for line in lines)


def test_bench_command_line(capsys):
    assert main(["bench", "--threads", "1", "--repeat", "1", "--filter", "layer_norm (8, 197, 384)"]) == 0
    out = capsys.readouterr().out
    assert "threads=1: copy bandwidth" in out
    assert "layer_norm (8, 197, 384)" in out


def test_info_command_shows_the_build(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "openmp" in out and "simd" in out


def test_parallel_copy_copies(rng):
    from fastnorm import _kernels

    src = rng.normal(size=100003).astype(np.float32)
    for n in (1, 2, 3):
        dst = np.zeros_like(src)
        _kernels.parallel_copy(src, dst, n)
        assert np.array_equal(dst, src)
