"""python -m bench model | serving | load | matrix | second-renderer | generalization: every benchmark of the project,
each writing one document."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.cli.common import command_line as training_command_line
from training.cli.common import ints


def command_line(argv: list[str]) -> str:
    return training_command_line(argv, program="bench")


def add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="latency and accuracy of PyTorch, OpenVINO and ONNX Runtime variants side by side; writes docs/benchmarks.md",
        description="Time every inference variant in one run on the same inputs (warm-up, then median and p90), "
        "model file sizes and one full layer through tiled inference.",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint.pt (model_int8.pt next to it is used when present); required unless --from-json",
    )
    p.add_argument("--sizes", default="256,512", help="input sizes in pixels (default: 256,512)")
    p.add_argument("--batch", default="1,8", help="batch sizes (default: 1,8)")
    p.add_argument("--threads", default="1,2", help="torch / ONNX Runtime threads (default: 1,2)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per row after warm-up (default: 20)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=8.0,
        help="stop a row's repeats after this long, keeping at least 3 (default: 8)",
    )
    p.add_argument(
        "--layer-size",
        type=int,
        default=2048,
        help="side of the full layer run through tiled inference (default: 2048)",
    )
    p.add_argument(
        "--prototype",
        type=Path,
        help="checkpoint.pt of the prototype's network (smp's default decoder, --decoder 256,128,64,32,16) trained "
        "and evaluated on the same data: its accuracy beside its latency (default: untrained, latency only)",
    )
    p.add_argument(
        "--report", type=Path, default=Path("docs/benchmarks.md"), help="Markdown report (default: docs/benchmarks.md)"
    )
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    p.add_argument(
        "--from-json", type=Path, help="measure nothing: write the report from the raw figures of an earlier run"
    )
    p.set_defaults(run=run_model)


def run_model(args: argparse.Namespace, argv: list[str]) -> str:
    from bench.model import Benchmark, bench, save_json
    from training.reports.benchmarks import write_report

    if args.from_json:
        write_report(Benchmark.from_dict(json.loads(args.from_json.read_text())), args.report)
        return f"wrote {args.report} and {args.report.with_suffix('.png')} from {args.from_json}"
    if args.checkpoint is None:
        raise ValueError("bench needs --checkpoint (or --from-json to rewrite a report from an earlier run)")
    result = bench(
        args.checkpoint, ints(args.sizes), ints(args.batch), ints(args.threads), args.repeat, args.max_seconds,
        args.layer_size, command=command_line(argv), prototype=args.prototype,
    )  # fmt: skip
    write_report(result, args.report)
    if args.json:
        save_json(result, args.json)
    return f"wrote {args.report} and {args.report.with_suffix('.png')}" + (f" and {args.json}" if args.json else "")


def add_serving(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=run_serving)


def run_serving(args: argparse.Namespace, argv: list[str]) -> str:
    from bench import serving
    from training.reports import serving as report

    result = serving.run(args.model_store, ints(args.sizes), args.repeat, args.max_seconds, command=command_line(argv))
    report.write_report(result, args.report)
    if args.json:
        serving.save(result, args.json)
    return f"{report.summary(result)}; wrote {args.report}" + (f" and {args.json}" if args.json else "")


def add_image(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "image",
        help="the serving image: size, build time, start to first answer, latency beside this machine, SIGTERM",
        description="Build the serving image from the model store's archives without and with the layer cache, run "
        "it, time `podman run` to its first answer, time one layer in the container and on a TorchServe of the same "
        "archives on this machine taking turns, then SIGTERM it with large layers in flight; write docs/image.md.",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="default: model_store")
    p.add_argument("--size", type=int, default=512, help="layer side of the latency rows (default: 512)")
    p.add_argument("--repeat", type=int, default=20, help="timed requests to each server (default: 20)")
    p.add_argument("--report", type=Path, default=Path("docs/image.md"), help="default: docs/image.md")
    p.add_argument(
        "--readme",
        type=Path,
        default=Path("README.md"),
        help="whose container section gets the table (default: README.md)",
    )
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    p.set_defaults(run=run_image)


def run_image(args: argparse.Namespace, argv: list[str]) -> str:
    from bench import image
    from training.inference.images import write_json
    from training.reports import image as report

    report.readme_span(args.readme.read_text())  # a README without the block is refused before the long run
    result = image.run(args.model_store, args.size, args.repeat, command=command_line(argv))
    report.write_report(result, args.report, args.readme)
    if args.json:
        write_json(args.json, result.to_dict())
    return f"{report.summary(result)}; wrote {args.report}, {args.readme}" + (f" and {args.json}" if args.json else "")


def add_load(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=run_load)


def run_load(args: argparse.Namespace, argv: list[str]) -> str:
    import tempfile

    from bench import load
    from bench.model import cpu_description
    from training.inference.images import write_json
    from training.inference.variants import model_names
    from training.reports.reliability import write_report

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store = load.store_from_checkpoint(args.checkpoint, Path(tmp))
        result = load.load_and_fault(store, model_names(), args.size, args.requests, args.concurrency)
    write_report(result, command_line(argv), cpu_description(), args.report)
    if args.json:
        write_json(args.json, result.to_dict())
    lost = result.fault["lost"]
    errors = [r["errors"] for r in result.load.values()]
    return f"errors {errors}, lost under a killed worker {lost}; wrote {args.report}" + (
        f" and {args.json}" if args.json else ""
    )


def add_matrix(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("matrix", help="serving throughput and latency over batchSize, workers and concurrency",
                       description="fp32 and int8 x batchSize 1, 4 x (1 worker, 2 threads) and (2 workers, 1 thread) "
                       "x concurrency; each beside the model alone; writes docs/throughput.md.")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt with model_fp32.pt / model_int8.pt")
    p.add_argument("--requests", type=int, default=48, help="requests per cell (default: 48)")
    p.add_argument("--concurrency", default="1,4,8", help="default: 1,4,8")
    p.add_argument("--size", type=int, default=512, help="layer side in pixels (default: 512)")
    p.add_argument("--report", type=Path, default=Path("docs/throughput.md"), help="default: docs/throughput.md")
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    p.set_defaults(run=run_matrix)


def run_matrix(args: argparse.Namespace, argv: list[str]) -> str:
    from bench import load
    from training.inference.images import write_json
    from training.reports.throughput import write_report

    rows = load.matrix(args.checkpoint, args.size, args.requests, ints(args.concurrency))
    result = load.Throughput(command_line(argv), rows, load.summarize(rows))
    summary = result.summary
    write_report(result, args.size, args.report)
    if args.json:
        write_json(args.json, result.to_dict())
    return (
        f"int8 / fp32 serving throughput {summary['throughput_ratio']:.1f}x; HTTP / model p50 "
        f"{summary['median_overhead']:.2f}; wrote {args.report}" + (f" and {args.json}" if args.json else "")
    )


def add_second_renderer(sub: argparse._SubParsersAction) -> None:
    from bench.second_renderer import SecondRendererConfig

    d = SecondRendererConfig()  # the defaults shown and used are the config's own
    p = sub.add_parser(
        "second-renderer",
        help="render layers with an independent renderer (no code shared with training.renderer) to test generalisation",
        description="Discrete powder particles, scan-tracked parts, Oren-Nayar + Blinn-Phong shading with soft "
        "shadows and its own camera; writes OUT/raw/<layer>_a{0,1,2}.png, truth/, meta/ and render_config.json, the "
        "layout `python -m training prepare` reads. The same arguments give the same bytes.",
    )
    lights = ",".join(f"{a:g}" for a in d.azimuths_deg)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--layers", type=int, required=True, help="number of layers")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--start", type=int, default=0, help="index of the first layer (default: 0)")
    p.add_argument("--size", type=int, default=d.size, help=f"layer side in pixels (default: {d.size})")
    p.add_argument("--pitch", type=float, default=d.pitch_um, help=f"micrometres per pixel (default: {d.pitch_um:g})")
    p.add_argument("--lights", default=lights, help=f"azimuths of images a0,a1,a2 in degrees (default: {lights})")
    p.add_argument("--elevation", type=float, default=d.elevation_deg,
                   help=f"light elevation in degrees (default: {d.elevation_deg:g})")  # fmt: skip
    p.add_argument("--bit-depth", type=int, default=d.bit_depth, help=f"8 or 16 (default: {d.bit_depth})")
    p.add_argument("--clean-fraction", type=float, default=d.clean_fraction,
                   help=f"share of defect-free layers (default: {d.clean_fraction:g})")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="processes rendering layers (default: 1)")
    p.set_defaults(run=run_second_renderer)


def run_second_renderer(args: argparse.Namespace, argv: list[str]) -> str:
    from bench.second_renderer import SecondRendererConfig, parse_azimuths, render_set

    config = SecondRendererConfig(
        size=args.size, pitch_um=args.pitch, azimuths_deg=parse_azimuths(args.lights), elevation_deg=args.elevation,
        bit_depth=args.bit_depth, clean_fraction=args.clean_fraction,
    )  # fmt: skip
    summary = render_set(config, args.out, args.layers, args.seed, args.start, command_line(argv), args.workers)
    defects = sum(summary["instances"].values())
    return (
        f"wrote {summary['layers']} layers ({summary['clean_layers']} clean, {defects} defects) of the second renderer "
        f"to {args.out}: raw/, truth/, meta/ and render_config.json"
    )


def add_generalization(sub: argparse._SubParsersAction) -> None:
    from training.learning.schedule import PROFILES

    p = sub.add_parser(
        "generalization",
        help="train on our generator's layers, test on layers rendered differently; writes docs/generalization.md",
        description="Render training sets with fixed and with randomised physics, train one model per input "
        "representation and training set (its threshold chosen on its own val layers), then score every model on "
        "held-out test sets: other light elevations, grain and exposure, 16-bit images, another pixel pitch and the "
        "second renderer. Data and models under --work are reused while their settings match.",
    )
    p.add_argument("--work", type=Path, default=Path("data/generalization"),
                   help="data and runs (default: data/generalization)")  # fmt: skip
    p.add_argument(
        "--report", type=Path, default=Path("docs/generalization.md"), help="default: docs/generalization.md"
    )
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    p.add_argument("--from-json", type=Path, help="measure nothing: write the document from an earlier run's --json")
    p.add_argument("--train-layers", type=int, default=120, help="layers of each training set (default: 120)")
    p.add_argument("--test-layers", type=int, default=40, help="layers of each test set (default: 40)")
    p.add_argument("--size", type=int, default=512, help="layer side in pixels (default: 512)")
    p.add_argument("--representations", default="intensity,shading,shading+albedo",
                   help="model inputs to train (default: intensity,shading,shading+albedo)")  # fmt: skip
    p.add_argument("--physics", default="fixed,randomised", help="training sets (default: fixed,randomised)")
    p.add_argument(
        "--minutes",
        type=float,
        help=f"training budget per model in minutes (default: {PROFILES['quick'].max_minutes:g}, the quick profile's)",
    )
    p.add_argument("--retrain", action="store_true", help="train every model again even when one can be reused")
    p.add_argument(
        "--fine-tune",
        action="store_true",
        help="also fine-tune each randomised-physics model on the second renderer's layers with heuristic labels "
        "(train --init), and score it beside the others",
    )
    p.add_argument("--workers", type=int, help="processes rendering and preparing layers (default: one per core)")
    p.set_defaults(run=run_generalization)


def run_generalization(args: argparse.Namespace, argv: list[str]) -> str:
    import dataclasses

    from bench import generalization as bench_generalization
    from training.inference.config import REPRESENTATIONS
    from training.learning.schedule import PROFILES
    from training.reports.generalization import write_report

    if args.from_json:
        result = bench_generalization.Generalization.from_dict(json.loads(args.from_json.read_text()))
        write_report(result, args.report)
        return f"wrote {args.report} from {args.from_json}"
    profile = PROFILES["quick"]
    if args.minutes is not None:
        profile = dataclasses.replace(profile, max_minutes=args.minutes)
    settings = bench_generalization.Settings(
        work=args.work, size=args.size, train_layers=args.train_layers, test_layers=args.test_layers,
        representations=bench_generalization.parse_names(args.representations, REPRESENTATIONS, "--representations"),
        physics=bench_generalization.parse_names(args.physics, bench_generalization.PHYSICS, "--physics"),
        profile=profile, retrain=args.retrain, workers=args.workers, command=command_line(argv),
        fine_tune=args.fine_tune,
    )  # fmt: skip
    result = bench_generalization.run(settings)
    write_report(result, args.report)
    if args.json:
        bench_generalization.save_json(result, args.json)
    return (
        f"scored {len(result.models)} models on {len(result.test_sets)} test sets in {result.seconds / 60:.1f} "
        f"minutes; wrote {args.report}" + (f" and {args.json}" if args.json else "")
    )


COMMANDS = (add_model, add_serving, add_image, add_load, add_matrix, add_second_renderer, add_generalization)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        message = args.run(args, argv)
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
