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

    p = sub.add_parser("load", help="load per variant with memory before and after, then a worker killed under load",
                       description="Against a TorchServe of the checkpoint's archives on loopback: --requests per "
                       "variant at --concurrency (errors, latency percentiles, throughput, memory), then the same "
                       "load on int8 with its worker SIGKILLed (requests lost, recovery time).")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt with model_fp32.pt / model_int8.pt")
    p.add_argument("--requests", type=int, default=2000, help="requests per variant (default: 2000)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    p.add_argument("--size", type=int, default=512, help="layer side in pixels (default: 512)")
    p.add_argument("--report", type=Path, default=Path("docs/reliability.md"), help="default: docs/reliability.md")
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")

    p = sub.add_parser("matrix", help="serving throughput and latency over batchSize, workers and concurrency",
                       description="fp32 and int8 x batchSize 1, 4 x (1 worker, 2 threads) and (2 workers, 1 thread) "
                       "x concurrency; each beside the model alone; a section of docs/benchmarks.md.")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt with model_fp32.pt / model_int8.pt")
    p.add_argument("--requests", type=int, default=48, help="requests per cell (default: 48)")
    p.add_argument("--concurrency", default="1,4,8", help="default: 1,4,8")
    p.add_argument("--size", type=int, default=512, help="layer side in pixels (default: 512)")
    p.add_argument("--report", type=Path, default=Path("docs/benchmarks.md"), help="default: docs/benchmarks.md")
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command in ("load", "matrix"):
        return run_load_or_matrix(args, argv)
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


def run_load_or_matrix(args: argparse.Namespace, argv: list[str]) -> int:
    import tempfile

    from bench import load, serving
    from training.bench import cpu_description
    from training.images import write_atomic, write_json

    command = serving.command_line(argv)
    try:
        if args.command == "load":
            with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
                store = load.store_from_checkpoint(args.checkpoint, Path(tmp))
                result = load.load_and_fault(store, ("defect_fp32", "defect_int8"), args.size, args.requests,
                                             args.concurrency)  # fmt: skip
            write_atomic(args.report, load.reliability_report(result, command, cpu_description()).encode())
            lost = result["fault"]["lost"]
            message = f"errors {[r['errors'] for r in result['load'].values()]}, lost under a killed worker {lost}"
        else:
            concurrencies = [int(c) for c in args.concurrency.split(",")]
            rows = load.matrix(args.checkpoint, args.size, args.requests, concurrencies)
            summary = load.summarize(rows)
            load.replace_section(args.report, load.matrix_section(rows, summary, command, args.size))
            result = {"command": command, "rows": rows, "summary": summary}
            message = (f"int8 / fp32 serving throughput {summary['throughput_ratio']:.1f}x; HTTP / model p50 "
                       f"{summary['median_overhead']:.2f}")  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, result)
    print(f"{message}; wrote {args.report}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
