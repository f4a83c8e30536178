"""``python -m fastnorm bench | demo | info``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnorm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time fastnorm against NumPy and PyTorch (when installed)")
    bench.add_argument("--threads", default=None,
                       help="comma-separated thread counts (default: 1 and the machine's count)")
    bench.add_argument("--repeat", type=int, default=15, help="timed calls per case (median reported)")
    bench.add_argument("--filter", default="", help="only cases whose name contains this text")
    demo = sub.add_parser("demo", help="train a small NumPy network with BatchNorm1d (under a minute)")
    demo.add_argument("--epochs", type=int, default=40)
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
    from ._bench import run

    counts = None if args.threads is None else [int(t) for t in args.threads.split(",")]
    run(thread_counts=counts, repeat=args.repeat, name_filter=args.filter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
