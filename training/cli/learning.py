"""`train`, `evaluate` and `quantize`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from training.cli.common import command_line, ints
from training.inference.config import REPRESENTATIONS, ModelConfig

log = logging.getLogger("training")


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
        help="BCE weight of defect pixels (default: the profile's; without one, from the labels' density)",
    )
    p.add_argument(
        "--pretrained", action="store_true", help="ImageNet encoder weights, only if already in the local cache"
    )
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    p.add_argument(
        "--init",
        type=Path,
        metavar="CHECKPOINT",
        help="start from this model's weights, input and network (fine-tuning, e.g. a synthetic model on your own "
        "prepared layers); it must be trained for the same light azimuths",
    )
    p.add_argument(
        "--binary",
        action="store_true",
        help="learn defect or not only, also from exact truth (default: from truth, the defect classes too)",
    )
    p.add_argument(
        "--pitch",
        help="micrometres per pixel of the camera the model will serve, for answers in mm (default: the training "
        "layers' pitch when they share one, else none)",
    )
    p.add_argument("--epochs", type=int, help="override the profile's number of epochs")
    p.add_argument("--max-minutes", type=float, help="override the profile's time budget")
    p.add_argument("--batch-size", type=int, help="override the profile's batch size")
    p.add_argument("--crop", type=int, help="override the profile's training crop size (a multiple of 32)")
    p.add_argument("--repeats", type=int, help="override the profile's crops per layer per epoch")
    p.add_argument("--lr", type=float, help="override the profile's peak learning rate")
    p.add_argument(
        "--representation",
        choices=tuple(REPRESENTATIONS),
        help=f"the model's input derived from the three images (default: {ModelConfig.representation})",
    )
    p.add_argument(
        "--decoder",
        help="U-Net decoder widths, deepest first, e.g. 128,64,32,16,8 "
        f"(default: the profile's, else {','.join(map(str, ModelConfig.decoder_channels))})",
    )
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace, argv: list[str]) -> str:
    from training.learning.train import check_profile, train

    overrides = {
        "epochs": args.epochs,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "repeats": args.repeats,
        "lr": args.lr,
        "representation": args.representation,
        "decoder_channels": tuple(ints(args.decoder)) if args.decoder else None,
    }
    profile = dataclasses.replace(check_profile(args.profile), **{k: v for k, v in overrides.items() if v is not None})
    from training.inference.config import check_pitch

    pitch = check_pitch(args.pitch, "--pitch") if args.pitch is not None else None
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
        command=command_line(argv),
        init=args.init,
        classes=not args.binary,
        pitch_um=pitch,
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
        help="precision-recall curve, threshold choice written to decision.json, report vs exact truth",
        description="Choose each checkpoint's decision threshold on --threshold-split by --rule, write it to "
        "decision.json beside the checkpoint (read by quantize and archive), and report scores on --split against exact truth and heuristic labels, with the "
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
    from training.learning.evaluate import evaluate, parse_rule

    report = args.report or args.checkpoint[0].parent / "results.md"
    results = evaluate(
        args.checkpoint, report, args.data, args.split, args.threshold_split, parse_rule(args.rule), args.reference,
        command_line(argv),
    )  # fmt: skip
    lines = []
    for r in results:
        truth = r.scores["vs_truth"]
        score = (
            f"{args.split} F1 vs truth {truth['f1']:.3f}"
            if truth
            else f"{args.split} F1 vs heuristic labels {r.scores['vs_heuristic']['f1']:.3f}"
        )
        lines.append(f"{r.checkpoint}: threshold {r.threshold:.3f}, {score}")
    return "\n".join([*lines, f"wrote {report} with its figures; decision.json beside each checkpoint"])


def add_quantize(sub: argparse._SubParsersAction) -> None:
    from training.inference.quantization import OPENVINO_RANGES, QuantizationConfig

    p = sub.add_parser(
        "quantize",
        help="every variant's model file for PyTorch and OpenVINO from a checkpoint, with int8-vs-float agreement",
        description="Quantize a trained checkpoint to int8 for each backend, both calibrated on the same training "
        "layers: PyTorch (static post-training, FX graph mode, per-channel weights, fused conv-bn-relu) and "
        "OpenVINO (the float network converted, then NNCF's post-training quantization); measure each against the "
        "float model on --split.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt written by train (and evaluate)")
    p.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--calibration", type=int, default=32, help="training layers to calibrate on (default: 32)")
    p.add_argument(
        "--observer",
        default="histogram",
        choices=("minmax", "histogram"),
        help="PyTorch int8's activation observer (default: histogram)",
    )
    p.add_argument(
        "--openvino-ranges",
        default=QuantizationConfig.openvino_ranges,
        choices=OPENVINO_RANGES,
        help=f"how NNCF sets the OpenVINO int8 model's activation ranges (default: {QuantizationConfig.openvino_ranges})",
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
        "--sweep",
        help="first measure both observers with these calibration counts on the val split, and each way of setting "
        "OpenVINO's ranges, e.g. 4,8,16,32,64",
    )
    p.set_defaults(run=run_quantize)


def run_quantize(args: argparse.Namespace, argv: list[str]) -> str:
    from training.inference.quantization import QuantizationConfig
    from training.learning.quantize import quantize_checkpoint
    from training.reports.quantization import write_report

    floats = tuple(n.strip() for n in args.float_modules.split(",") if n.strip())
    engine = "x86" if args.engine == "auto" else args.engine
    settings = QuantizationConfig(
        engine=engine,
        observer=args.observer,
        calibration_images=args.calibration,
        float_modules=floats,
        openvino_ranges=args.openvino_ranges,
    )
    report = quantize_checkpoint(
        args.checkpoint, args.out, settings, args.data, args.split, command_line(argv), args.engine == "auto",
        ints(args.sweep) if args.sweep else None,
    )  # fmt: skip
    if args.report:
        write_report(report, args.report)
    static = report.static_int8
    f1 = (
        f", F1 vs truth {static['f1_float']:.3f} (fp32) / {static['f1_int8']:.3f} (int8)" if "f1_int8" in static else ""
    )
    return (
        f"int8 vs fp32 on {report.layers} {args.split} layers: mask IoU {static['mask_iou']:.3f}, decision agreement "
        f"{static['decision_agreement']:.3f}{f1}; OpenVINO int8 (NNCF): mask IoU {report.openvino_int8['mask_iou']:.3f}; "
        f"wrote {', '.join(p for paths in report.files.values() for p in paths.values())} and quantization.json"
        + (f"; report {args.report}" if args.report else "")
    )
