"""``python -m fastnorm bench | demo | info``."""
import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

from ._version import __version__


def _thread_counts(text: str) -> List[int]:
    """'1,2' -> [1, 2]: positive integers, comma-separated."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,2; got {text!r}")
    return counts


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _writable(path: str) -> str:
    """A path the command can write at the end: checked now, so that a typo fails before the measuring."""
    where = os.path.dirname(os.path.abspath(path))
    target = path if os.path.exists(path) else where
    if os.path.isdir(path) or not os.path.isdir(where) or not os.access(target, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path!r}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) names; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fastnorm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastnorm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time fastnorm against NumPy and PyTorch (when installed)")
    bench.add_argument("--threads", type=_thread_counts, default=None,
                       help="comma-separated thread counts (default: 1 and the machine's count)")
    bench.add_argument("--repeat", type=_positive, default=15,
                       help="timed calls per case (median and p25-p75 reported)")
    bench.add_argument("--filter", default="",
                       help="only cases whose name contains this text (and sections named so: latency, shared, "
                            "pipeline, fused)")
    bench.add_argument("--hot", action="store_true",
                       help="leave the caches as the previous call left them (default: evicted before each call)")
    bench.add_argument("--json", type=_writable, metavar="FILE",
                       help="also write the setup and every row (medians, p25, p75, GB/s, baselines) as JSON")
    bench.add_argument("--plot", type=_writable, metavar="FILE.png",
                       help="also save a figure of fastnorm against NumPy and PyTorch per case (needs matplotlib)")
    demo = sub.add_parser("demo", help="train a small NumPy network with BatchNorm1d (a few seconds)")
    demo.add_argument("--epochs", type=_positive, default=40)
    sub.add_parser("info", help="show the build configuration")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run as demo_run

        demo_run(epochs=args.epochs)
        return 0
    if args.command == "info":
        from . import show_config

        show_config()
        return 0
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            bench.error("--plot needs matplotlib: pip install matplotlib")
    from . import _bench

    report = _bench.run(thread_counts=args.threads, repeat=args.repeat, name_filter=args.filter,
                        evict=not args.hot)
    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot is not None:
        _bench.plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
