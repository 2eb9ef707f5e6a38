"""`python -m training <command>`: thin entry points over the library, one subcommand per pipeline step. Each
module of this package adds the commands of one package of the library."""

from __future__ import annotations

import argparse
import logging
import sys

from training.cli import data, deployments, learning, serving

COMMANDS = (
    data.add_synth, data.add_prepare, learning.add_train, learning.add_evaluate, learning.add_quantize,
    serving.add_bench, serving.add_archive, serving.add_serve, serving.add_stop, serving.add_schema,
    deployments.add_deployments, deployments.add_image,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Multi-angle powder-bed defect segmentation: data, training, quantization, archiving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # moved to `python -m bench model`; the old command line still works
        from bench.__main__ import main as bench_main

        return bench_main(["model", *argv[1:]])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        message = args.run(args, argv)
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if message:
        print(message)
    return 0
