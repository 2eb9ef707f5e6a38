"""python -m bench serving ...: serving benchmarks against a real TorchServe on loopback."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = sub.add_parser(
        "serving",
        help="single-request HTTP latency per variant beside the model-only time, in one run",
        description="Start TorchServe on free loopback ports with the model store's archives, time one request at a "
        "time per variant and layer size, then the same archive's model alone; write a Markdown report and a plot.",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="default: model_store")
    p.add_argument("--sizes", default="512,2048", help="layer sizes in pixels (default: 512,2048)")
    p.add_argument("--repeat", type=int, default=10, help="timed requests per row after warm-up (default: 10)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop a row's repeats after this long (default: 60)")
    p.add_argument("--report", type=Path, default=Path("docs/serving.md"), help="default: docs/serving.md")
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bench import serving

    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        result = serving.run(args.model_store, sizes, args.repeat, args.max_seconds, command=serving.command_line(argv))
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    serving.write_report(result, args.report)
    if args.json:
        serving.save(result, args.json)
    print(f"{serving.summary(result)}; wrote {args.report}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
