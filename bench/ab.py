"""Same-process A/B of fastnorm at a baseline revision against the working tree.

    PYTHONPATH=src python bench/ab.py REV [--threads 1 2] [--filter layer_norm] [--hot] [--rounds 20]
        [--shape 448,3584 ...] [--dtype float16]

Builds REV in a temporary git worktree, imports that build as a second package, ``fastnorm_base``, next to
the ``fastnorm`` that Python imports (the working tree's, built in place with ``python setup.py
build_ext --inplace``, under ``PYTHONPATH=src``; the installed one without it), and times both on the same
arrays in alternating blocks, the order flipped every round. Unless ``--hot``, a 64 MiB write before each call
evicts the data, as other work does between layers. Prints each build's median and base/new.

The two builds must see the same arrays and the same cache state: an A/B where something touched one
build's input just before it ran showed 1.1-1.4x for whichever build was second. Each round puts the
inputs at a new random place: with x, dy and the output at fixed addresses, one build's output could sit
at an unlucky distance from its inputs modulo 4 KiB for the whole run (LayerNorm backward (4096, 768):
up to 1.15x slower at some distances), and an A/A run showed 0.91x. An A/A run (REV = HEAD on a clean
tree) shows the noise floor.
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_baseline(rev, where):
    """The package at ``rev``, built, as ``fastnorm_base`` under ``where``."""
    tree = os.path.join(where, "tree")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, rev], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if built.returncode:
            sys.exit(f"building {rev} failed:\n{built.stderr}")
        shutil.copytree(os.path.join(tree, "src", "fastnorm"), os.path.join(where, "fastnorm_base"))
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=True)
    package = os.path.join(where, "fastnorm_base")
    spec = importlib.util.spec_from_file_location("fastnorm_base", os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastnorm_base"] = module  # before running it: its relative imports look it up
    spec.loader.exec_module(module)
    return module


def cases():
    """(name, shape, channel axis, call(F, x, g, w, b) -> callable)."""
    def train(F, x, g, w, b, axis=1):
        return lambda: F.batch_norm(x, None, None, w, b, True, channel_axis=axis)

    def bn_backward(F, x, g, w, b, act=None):
        _, mean, rstd = F.batch_norm(x, None, None, w, b, True, return_stats=True)
        through = {"activation": act, "bias": b} if act else {}
        return lambda: F.batch_norm_backward(g, x, mean, rstd, w, **through)

    def ln_backward(F, x, g, w, b, act=None):
        D = x.shape[-1]
        _, mean, rstd = F.layer_norm(x, D, w, b, return_stats=True)
        through = {"activation": act} if act else {}
        return lambda: F.layer_norm_backward(g, x, D, mean, rstd, w, b, **through)

    yield "batch_norm train NCHW", (32, 64, 56, 56), 1, train
    yield "batch_norm train NHWC", (32, 56, 56, 64), -1, lambda F, x, g, w, b: train(F, x, g, w, b, -1)
    yield "batch_norm eval NCHW", (32, 64, 56, 56), 1, lambda F, x, g, w, b: (
        lambda: F.batch_norm(x, np.zeros_like(w), np.ones_like(w), w, b))
    yield "layer_norm", (4096, 768), -1, lambda F, x, g, w, b: lambda: F.layer_norm(x, x.shape[-1], w, b)
    yield "layer_norm", (8, 197, 384), -1, lambda F, x, g, w, b: lambda: F.layer_norm(x, x.shape[-1], w, b)
    yield "layer_norm residual", (4096, 768), -1, lambda F, x, g, w, b: (
        lambda: F.layer_norm(x, x.shape[-1], w, b, residual=g))
    yield "group_norm G=32", (8, 256, 32, 32), 1, lambda F, x, g, w, b: lambda: F.group_norm(x, 32, w, b)
    yield "instance_norm", (8, 64, 64, 64), 1, lambda F, x, g, w, b: lambda: F.instance_norm(x, None, None, w, b)
    yield "instance_norm", (32, 256, 8, 8), 1, lambda F, x, g, w, b: lambda: F.instance_norm(x, None, None, w, b)
    yield "rms_norm", (4096, 4096), -1, lambda F, x, g, w, b: lambda: F.rms_norm(x, x.shape[-1], w)
    yield "batch_norm backward", (32, 64, 56, 56), 1, bn_backward
    yield "layer_norm backward", (4096, 768), -1, ln_backward
    for act in ("relu", "gelu"):
        yield (f"batch_norm backward {act}", (32, 64, 56, 56), 1,
               lambda F, x, g, w, b, a=act: bn_backward(F, x, g, w, b, a))
    yield "layer_norm backward gelu", (4096, 768), -1, lambda F, x, g, w, b: ln_backward(F, x, g, w, b, "gelu")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the baseline revision (e.g. HEAD, HEAD~3, a commit)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--hot", action="store_true", help="no cache eviction between calls")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--shape", nargs="+", default=[],
                        help="run the filtered cases on these shapes instead (comma-separated dims)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="the data's dtype (bfloat16: ml_dtypes'); weight and bias stay float32")
    args = parser.parse_args()
    dtype = np.dtype(importlib.import_module("ml_dtypes").bfloat16 if args.dtype == "bfloat16" else args.dtype)

    import fastnorm
    shapes = [tuple(int(d) for d in s.split(",")) for s in args.shape]
    with tempfile.TemporaryDirectory() as where:
        base = build_baseline(args.rev, where)
        junk = np.ones(16 << 20, np.float32)

        def block(f, calls=5):
            times = []
            for _ in range(calls):
                if not args.hot:
                    np.add(junk, 1, out=junk)
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            return np.median(times)

        print(f"base {args.rev} against {os.path.dirname(fastnorm.__file__)}; "
              f"{'hot' if args.hot else 'evicted'} caches; {args.dtype}")
        rng = np.random.default_rng(0)
        for name, case_shape, axis, make in cases():
            if args.filter not in name:
                continue
            for shape in shapes or [case_shape]:
                size = int(np.prod(shape))
                x = rng.standard_normal(size + 1024, dtype=np.float32).astype(dtype)
                g = rng.standard_normal(size + 1024, dtype=np.float32).astype(dtype)
                C = shape[axis]
                w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
                for n in args.threads:
                    with base.threads(n), fastnorm.threads(n):
                        t_old, t_new = [], []
                        for k in range(args.rounds):
                            # Inputs at a new place every round: where x, dy and the output fall relative
                            # to one another modulo 4 KiB moves a call's time by up to 10%.
                            ox, og = rng.integers(0, 1024, 2)
                            xk, gk = x[ox:ox + size].reshape(shape), g[og:og + size].reshape(shape)
                            old, new = make(base.functional, xk, gk, w, b), make(fastnorm.functional, xk, gk, w, b)
                            old(), new()
                            for f, times in ((old, t_old), (new, t_new))[:: 1 if k % 2 else -1]:
                                times.append(block(f))
                    a, c = np.median(t_old), np.median(t_new)
                    print(f"{name + ' ' + str(shape):44}{n:>3} thr  base {a * 1e3:8.3f} ms  new {c * 1e3:8.3f} ms"
                          f"  base/new {a / c:5.2f}")


if __name__ == "__main__":
    main()
