"""`python -m training <command>`: thin entry points over the library, one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

log = logging.getLogger("training")


def _command_line(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "training", *argv])


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="render synthetic three-light layer images with exact defect truth",
        description="Render synthetic powder-bed layers: a height field with parts and defects, lit from three "
        "azimuths, with exact truth masks and per-layer metadata. Writes OUT/raw, OUT/truth, OUT/meta.",
    )
    p.add_argument("--out", type=Path, default=Path("data/synth"), help="output folder (default: data/synth)")
    p.add_argument("--layers", type=int, default=100, help="number of layers (default: 100)")
    p.add_argument("--size", type=int, help="layer width = height in pixels (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    p.add_argument("--start", type=int, default=0, help="index of the first layer, to extend a set (default: 0)")
    p.add_argument("--lights", help="three light azimuths in degrees, counter-clockwise from +x (default: 0,120,240)")
    p.add_argument("--elevation", type=float, help="light elevation above the bed in degrees (default: 30)")
    p.add_argument("--pitch", type=float, help="pixel pitch on the bed in micrometres (default: 25)")
    p.add_argument("--supersample", type=int, help="render pixels per camera pixel, per axis (default: 2)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), help="bits per pixel of the PNG files (default: 8)")
    p.add_argument("--clean-fraction", type=float, help="share of layers without defects (default: 0.2)")
    p.add_argument("--classes", help="comma-separated defect classes to draw, or 'all' (default: all)")
    p.add_argument("--config", type=Path, help="JSON file with SynthConfig fields (as in OUT/synth_config.json)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace, argv: list[str]) -> str:
    from training import defects, lighting
    from training.synth import SynthConfig, synthesize

    config = SynthConfig.from_json(json.loads(args.config.read_text())) if args.config else SynthConfig()
    overrides: dict = {}
    if args.size is not None:
        overrides["size"] = args.size
    if args.lights is not None:
        overrides["azimuths_deg"] = lighting.parse_azimuths(args.lights)
    if args.elevation is not None:
        overrides["elevation_deg"] = lighting.check_elevation(args.elevation)
    if args.pitch is not None:
        overrides["pitch_um"] = args.pitch
    if args.supersample is not None:
        overrides["supersample"] = args.supersample
    if args.clean_fraction is not None:
        overrides["clean_fraction"] = args.clean_fraction
    if args.bit_depth is not None:
        overrides["camera"] = dataclasses.replace(config.camera, bit_depth=args.bit_depth)
    config = dataclasses.replace(config, **overrides)
    if args.classes is not None:
        config = config.only_classes(defects.parse_classes(args.classes))

    summary = synthesize(
        config,
        args.out,
        args.layers,
        seed=args.seed,
        workers=args.workers,
        start=args.start,
        command=_command_line(argv),
    )
    found = ", ".join(f"{n} {c}" for n, c in summary["instances"].items() if c)
    log.info("defect instances: %s; defect-free layers: %d", found or "none", summary["clean_layers"])
    log.info(
        "%.1f layers/s (%d layers in %.1f s, %d workers)",
        summary["layers_per_second"],
        args.layers,
        summary["seconds"],
        summary["workers"],
    )
    return (
        f"wrote {args.layers} layers to {args.out}/raw (images), {args.out}/truth (class maps), "
        f"{args.out}/meta (JSON) and {args.out}/synth_config.json"
    )


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="filter raw triplets, stack them, make heuristic labels, split, report",
        description="Group RAW/<layer_id>_a<k>.<ext> files into triplets, drop unusable ones (with reasons), "
        "write stacked images, heuristic labels and manifest.csv to OUT; with --truth, also write the "
        "label-quality report.",
    )
    p.add_argument(
        "--raw", type=Path, default=Path("data/synth/raw"), help="folder of raw images (default: data/synth/raw)"
    )
    p.add_argument("--out", type=Path, default=Path("data/processed"), help="output folder (default: data/processed)")
    p.add_argument(
        "--vote",
        default="majority",
        choices=("and", "majority", "or"),
        help="how many lights must agree: 3, 2 or 1 (default: majority)",
    )
    p.add_argument("--truth", type=Path, help="folder of exact truth class maps <layer_id>.png (synthetic data)")
    p.add_argument(
        "--lights",
        help="azimuths of the lights of a0, a1, a2 in degrees (default: from synth_config.json, else 0,120,240)",
    )
    p.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions (default: 0.7,0.15,0.15)")
    p.add_argument("--threshold", type=float, help="anomaly threshold in robust standard deviations (default: 2.5)")
    p.add_argument("--background-sigma", type=float, help="background blur in pixels (default: 12)")
    p.add_argument("--min-area", type=int, help="smallest labelled component in pixels (default: 12)")
    p.add_argument("--report-dir", type=Path, default=Path("docs"), help="where label_quality.md goes (default: docs)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace, argv: list[str]) -> str:
    from training.labels import LabelConfig
    from training.prepare import PrepareConfig, parse_split, prepare

    label_args = {
        "threshold": args.threshold,
        "background_sigma_px": args.background_sigma,
        "min_area_px": args.min_area,
    }
    labels = LabelConfig(**{k: v for k, v in label_args.items() if v is not None})
    from training.lighting import parse_azimuths

    azimuths = parse_azimuths(args.lights) if args.lights else None
    config = PrepareConfig(vote=args.vote, labels=labels, split=parse_split(args.split), azimuths_deg=azimuths)
    report = prepare(args.raw, args.out, config, args.truth, args.report_dir, args.workers, _command_line(argv))
    splits = ", ".join(f"{n} {s}" for s, n in report["splits"].items())
    where = f"wrote {report['kept']} layers ({splits}) to {args.out} (manifest.csv, images/, masks/"
    where += ", truth/)" if args.truth else ")"
    where += f"; dropped {report['dropped']} (reasons in {args.out}/dropped.csv)"
    if "label_quality" in report:
        where += f"; label quality: {report['label_quality']['markdown']}"
    return where


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the U-Net (MobileNetV2 encoder) on a prepared folder",
        description="Train on DATA (written by prepare). Writes OUT/checkpoint.pt (best by validation F1), "
        "OUT/last.pt, metrics.csv, curves.png, tb/ and args.json. Start with torchrun for several processes.",
    )
    p.add_argument(
        "--data", type=Path, default=Path("data/processed"), help="prepared folder (default: data/processed)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="run folder (default: runs/default)")
    p.add_argument(
        "--profile",
        default="quick",
        choices=("quick", "full"),
        help="quick: <= 4 min on 2 CPU cores; full: the recipe for a better model (default: quick)",
    )
    p.add_argument(
        "--labels",
        default="heuristic",
        choices=("heuristic", "truth", "masks"),
        help="what to learn from (default: heuristic, what real data has)",
    )
    p.add_argument("--masks", type=Path, help="with --labels masks: folder of <layer_id>.png masks (nonzero = defect)")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="auto: cuda, then mps, then cpu"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--pos-weight",
        type=float,
        help="BCE weight of defect pixels (default: background/defect ratio of the training labels)",
    )
    p.add_argument(
        "--pretrained", action="store_true", help="ImageNet encoder weights, only if already in the local cache"
    )
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    p.add_argument("--epochs", type=int, help="override the profile's number of epochs")
    p.add_argument("--max-minutes", type=float, help="override the profile's time budget")
    p.add_argument("--batch-size", type=int, help="override the profile's batch size")
    p.add_argument("--crop", type=int, help="override the profile's training crop size (a multiple of 32)")
    p.add_argument("--repeats", type=int, help="override the profile's crops per layer per epoch")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace, argv: list[str]) -> str:
    from training.train import check_profile, train

    overrides = {
        "epochs": args.epochs,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "repeats": args.repeats,
    }
    profile = dataclasses.replace(check_profile(args.profile), **{k: v for k, v in overrides.items() if v is not None})
    summary = train(
        args.data,
        args.out,
        profile,
        labels=args.labels,
        masks_dir=args.masks,
        device_name=args.device,
        seed=args.seed,
        pos_weight=args.pos_weight,
        pretrained=args.pretrained,
        resume=args.resume,
        loader_workers=args.loader_workers,
        command=_command_line(argv),
    )
    if not summary:  # not the main process of a distributed run
        return ""
    return (
        f"best epoch {summary['best_epoch']} of {summary['epochs_run']}: val F1 {summary['f1']:.3f}, "
        f"defect recall {summary['defect_recall']:.3f} ({summary['seconds']:.0f} s); wrote {args.out}/checkpoint.pt, "
        f"last.pt, metrics.csv, curves.png, tb/, args.json"
    )


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="precision-recall curve, threshold choice written into the checkpoint, report vs exact truth",
        description="Choose each checkpoint's decision threshold on --threshold-split by --rule, write it into the "
        "checkpoint's ModelConfig, and report scores on --split against exact truth and heuristic labels, with the "
        "heuristic labeller as a baseline.",
    )
    p.add_argument(
        "--checkpoint", type=Path, action="append", required=True, help="checkpoint.pt (repeat to compare models)"
    )
    p.add_argument("--data", type=Path, help="prepared folder (default: the one the first model was trained on)")
    p.add_argument("--split", default="test", help="split to report on (default: test)")
    p.add_argument("--threshold-split", default="val", help="split the threshold is chosen on (default: val)")
    p.add_argument("--rule", nargs="+", default=["max-f1"], metavar="RULE", help="max-f1 (default) or: min-recall R")
    p.add_argument(
        "--reference",
        default="labels",
        choices=("labels", "truth"),
        help="choose the threshold against the model's own label source (default) or exact truth",
    )
    p.add_argument("--report", type=Path, help="Markdown report (default: results.md next to the first checkpoint)")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace, argv: list[str]) -> str:
    from training.evaluate import evaluate, parse_rule

    report = args.report or args.checkpoint[0].parent / "results.md"
    results = evaluate(
        args.checkpoint, report, args.data, args.split, args.threshold_split, parse_rule(args.rule), args.reference,
        _command_line(argv),
    )  # fmt: skip
    lines = []
    for r in results:
        truth = r["scores"]["vs_truth"]
        score = (
            f"{args.split} F1 vs truth {truth['f1']:.3f}"
            if truth
            else f"{args.split} F1 vs heuristic labels {r['scores']['vs_heuristic']['f1']:.3f}"
        )
        lines.append(f"{r['checkpoint']}: threshold {r['threshold']:.3f}, {score}")
    return "\n".join([*lines, f"wrote {report} with its figures; thresholds written into the checkpoints"])


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="float32 and static int8 state dicts of a checkpoint, with int8-vs-float agreement",
        description="Quantize a trained checkpoint to int8 (static post-training, FX graph mode, per-channel weights, "
        "fused conv-bn-relu, calibrated on training layers) and measure it against the float model on --split.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt written by train (and evaluate)")
    p.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--calibration", type=int, default=32, help="training layers to calibrate on (default: 32)")
    p.add_argument(
        "--observer",
        default="histogram",
        choices=("minmax", "histogram"),
        help="activation observer (default: histogram)",
    )
    p.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "x86", "onednn", "fbgemm"),
        help="quantized kernels; auto: time each on this machine and keep the fastest (default)",
    )
    p.add_argument(
        "--float-modules", default="", help="comma-separated module names to keep in float32, e.g. segmentation_head"
    )
    p.add_argument("--data", type=Path, help="prepared folder (default: the one the model was trained on)")
    p.add_argument("--split", default="test", help="split for the agreement figures (default: test)")
    p.add_argument("--report", type=Path, help="also write the agreement table as Markdown (e.g. docs/quantization.md)")
    p.add_argument(
        "--sweep", help="first measure both observers with these calibration counts on the val split, e.g. 4,8,16,32,64"
    )
    p.set_defaults(run=run_quantize)


def run_quantize(args: argparse.Namespace, argv: list[str]) -> str:
    from training.quantization import QuantizationConfig
    from training.quantize import quantize_checkpoint, write_report

    floats = tuple(n.strip() for n in args.float_modules.split(",") if n.strip())
    engine = "x86" if args.engine == "auto" else args.engine
    settings = QuantizationConfig(
        engine=engine, observer=args.observer, calibration_images=args.calibration, float_modules=floats
    )
    report = quantize_checkpoint(
        args.checkpoint, args.out, settings, args.data, args.split, _command_line(argv), args.engine == "auto",
        _ints(args.sweep) if args.sweep else None,
    )  # fmt: skip
    if args.report:
        write_report(report, args.report)
    static, sizes = report["static_int8"], report["sizes_bytes"]
    f1 = (
        f", F1 vs truth {static['f1_float']:.3f} (fp32) / {static['f1_int8']:.3f} (int8)" if "f1_int8" in static else ""
    )
    return (
        f"int8 vs fp32 on {report['layers']} {args.split} layers: mask IoU {static['mask_iou']:.3f}, decision agreement "
        f"{static['decision_agreement']:.3f}{f1}; wrote {report['files']['fp32']} ({sizes['fp32'] / 1e6:.1f} MB), "
        f"{report['files']['int8']} ({sizes['int8'] / 1e6:.1f} MB) and quantization.json"
        + (f"; report {args.report}" if args.report else "")
    )


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"expected comma-separated whole numbers such as 1,2, got {text!r}") from err
    if not values or min(values) < 1:
        raise ValueError(f"expected positive whole numbers, got {text!r}")
    return values


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="latency of float, int8 and ONNX Runtime variants side by side; writes docs/benchmarks.md",
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
        "--report", type=Path, default=Path("docs/benchmarks.md"), help="Markdown report (default: docs/benchmarks.md)"
    )
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    p.add_argument(
        "--from-json", type=Path, help="measure nothing: write the report from the raw figures of an earlier run"
    )
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace, argv: list[str]) -> str:
    from training.bench import bench, save_json, write_report

    if args.from_json:
        write_report(json.loads(args.from_json.read_text()), args.report)
        return f"wrote {args.report} and {args.report.with_suffix('.png')} from {args.from_json}"
    if args.checkpoint is None:
        raise ValueError("bench needs --checkpoint (or --from-json to rewrite a report from an earlier run)")
    result = bench(
        args.checkpoint, _ints(args.sizes), _ints(args.batch), _ints(args.threads), args.repeat, args.max_seconds,
        args.layer_size, command=_command_line(argv),
    )  # fmt: skip
    write_report(result, args.report)
    if args.json:
        save_json(result, args.json)
    return f"wrote {args.report} and {args.report.with_suffix('.png')}" + (f" and {args.json}" if args.json else "")


def add_archive(sub: argparse._SubParsersAction) -> None:
    from training.serving import ServingConfig

    defaults = ServingConfig()
    p = sub.add_parser(
        "archive",
        help="TorchServe archives defect_fp32.mar and defect_int8.mar from a quantized checkpoint",
        description="Pack the handler, the shared input/output modules, the weights, the ModelConfig and a "
        "model-config.yaml per variant into .mar archives with torch-model-archiver. Needs model_fp32.pt and "
        "model_int8.pt beside the checkpoint (written by quantize).",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt (evaluated and quantized)")
    p.add_argument("--out", type=Path, default=Path("model_store"), help="model store folder (default: model_store)")
    p.add_argument("--version", default="1.0", help="model version reported in every answer (default: 1.0)")
    p.add_argument(
        "--prefix", default="defect", help="model names are <prefix>_fp32 and <prefix>_int8 (default: defect)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.max_workers,
        help=f"workers per variant (default: {defaults.max_workers})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=defaults.torch_threads,
        help=f"torch threads per worker (default: {defaults.torch_threads})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"TorchServe batchSize (default: {defaults.batch_size})",
    )
    p.add_argument(
        "--max-batch-delay",
        type=int,
        default=defaults.max_batch_delay_ms,
        help=f"ms to wait for a batch to fill (default: {defaults.max_batch_delay_ms})",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=defaults.max_image_pixels,
        help=f"largest image accepted, in pixels (default: {defaults.max_image_pixels})",
    )
    p.set_defaults(run=run_archive)


def run_archive(args: argparse.Namespace, argv: list[str]) -> str:
    from training.archive import build_archives
    from training.serving import ServingConfig

    serving = ServingConfig(
        min_workers=args.workers, max_workers=args.workers, batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay, torch_threads=args.threads, max_image_pixels=args.max_image_pixels,
    )  # fmt: skip
    built = build_archives(args.checkpoint, args.out, serving, args.version, args.prefix)
    return "wrote " + ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in built.values())


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start TorchServe in the background with both archives and config.properties",
        description="Start TorchServe with config.properties and defect_fp32.mar / defect_int8.mar from the model "
        "store, wait until both answer, and print the endpoints and where the inference key is.",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="default: model_store")
    p.add_argument("--home", type=Path, default=Path("runs/serve"), help="logs and key_file.json (default: runs/serve)")
    p.add_argument("--config", type=Path, default=Path("config.properties"), help="default: config.properties")
    p.add_argument(
        "--probe", nargs=3, type=Path, metavar=("A0", "A1", "A2"), help="then send these three images to both variants"
    )
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace, argv: list[str]) -> str:
    from training.torchserve import start

    server = start(args.model_store, args.home, config=args.config)
    lines = [
        f"TorchServe is running (home {server.home}):",
        *[f"  {name:<10} {url}" for name, url in server.urls.items()],
        f"  models     {', '.join(server.models)}",
        f"  keys       {server.key_file} (send 'Authorization: Bearer <inference key>'; docs/api.md)",
    ]
    if args.probe:
        from client.client import DefectClient, ServiceError

        client = DefectClient(server.urls["inference"], key_file=server.key_file, retries=0)
        for model in server.models:
            try:
                status, answer = 200, client.predict(args.probe, model).answer
            except ServiceError as err:
                status, answer = err.status, {"message": str(err)}
            if "mask" in answer:
                answer["mask"]["data"] = answer["mask"]["data"][:32] + "..."
            answer["components"] = answer.get("components", [])[:3]
            body = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in answer.items())
            lines += [f"POST {server.urls['inference']}/predictions/{model} ({args.probe[0].name} ...): HTTP {status}",
                      "{\n" + body + "\n}"]  # fmt: skip
    lines.append(f"stop it with: make stop (or python -m training stop --home {server.home})")
    return "\n".join(lines)


def add_stop(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stop", help="stop the TorchServe started by serve")
    p.add_argument("--home", type=Path, default=Path("runs/serve"), help="the serve --home (default: runs/serve)")
    p.set_defaults(run=run_stop)


def run_stop(args: argparse.Namespace, argv: list[str]) -> str:
    from training.torchserve import Server

    said = Server(args.home.resolve(), {}, ()).stop()
    return f"{args.home}: {said or 'stopped'}"


COMMANDS = (
    add_synth, add_prepare, add_train, add_evaluate, add_quantize, add_bench, add_archive, add_serve, add_stop
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
