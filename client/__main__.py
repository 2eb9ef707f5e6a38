"""python -m client predict | batch | ab-report: the factory side of the defect detection service.

Exit status: 0 done; 1 the service refused a request or never answered it (batch: any layer; its outputs are still
written); 2 bad input (arguments, files).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from client.ab import ABClient, WeightedSplit, decode_mask, example_split
from client.client import DEFAULT_KEY_FILE, DEFAULT_TIMEOUT_S, DEFAULT_URL, KEY_ENV, DefectClient, ServiceError
from training.inference.variants import default_model, model_names


class LayersFailed(ServiceError):
    """Some layers of a batch got no answer; the outputs are written and `summary` says what was."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"inference address (default: {DEFAULT_URL})")
    p.add_argument("--model", default=default_model(), help=f"model (variant) to ask (default: {default_model()})")
    p.add_argument("--key", help=f"inference key (default: ${KEY_ENV}, else the key file)")
    p.add_argument(
        "--key-file",
        type=Path,
        default=DEFAULT_KEY_FILE,
        help=f"TorchServe's key_file.json (default: {DEFAULT_KEY_FILE})",
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds per request (default: {DEFAULT_TIMEOUT_S:g})")  # fmt: skip
    p.add_argument("--retries", type=int, default=5, help="retries on connection errors and 503/507 (default: 5)")
    p.add_argument("--threshold", type=float, help="decision threshold for these requests (default: the model's)")
    p.add_argument("--pitch", help="micrometres per pixel of these images, for areas in mm² (default: the model's)")
    p.add_argument("--ignore-classes", help="defect classes left out of the decision, e.g. spatter,pit")


def _ab(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--ab", help=f"weighted split, sticky per layer id, e.g. {example_split()}")
    group.add_argument("--shadow", help="PRIMARY,SHADOW: ask both, keep the primary's answer, record the comparison")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("predict", help="one layer: three images in, the answer out")
    p.add_argument(
        "--angles", nargs=3, type=Path, required=True, metavar=("A0", "A1", "A2"), help="image k lit from light k"
    )
    p.add_argument("--out", type=Path, help="write the answer JSON here (default: print it, mask data shortened)")
    p.add_argument("--overlay", type=Path, help="write the mask outline over the stacked images as PNG")
    p.add_argument("--layer-id", help="layer id for the A/B split (default: the first file's name)")
    _common(p)
    _ab(p)

    p = sub.add_parser(
        "batch",
        help="every complete triplet of a folder, with progress, JSON lines and a CSV; exits 1 if a layer failed",
    )
    p.add_argument("--raw", type=Path, required=True, help="folder of <layer_id>_a<k>.<ext> files")
    p.add_argument(
        "--out", type=Path, default=Path("results.jsonl"), help="JSON lines, one per layer (default: results.jsonl)"
    )
    p.add_argument("--summary", type=Path, help="CSV summary, one row per layer")
    p.add_argument("--overlays", type=Path, help="folder for overlay PNGs")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (default: 2)")
    _common(p)
    _ab(p)

    p = sub.add_parser("ab-report", help="variants side by side over a labeled set: latency, throughput, F1, agreement")
    p.add_argument(
        "--data", type=Path, required=True, help="prepared folder (manifest.csv) or synthetic folder (raw/, truth/)"
    )
    p.add_argument("--split", default="test", help="split of a prepared folder ('all' for every layer; default: test)")
    models = ",".join(model_names())
    p.add_argument("--models", default=models, help=f"variants to compare (default: {models})")
    p.add_argument("--requests", type=int, default=50, help="requests per variant (default: 50)")
    p.add_argument("--report", type=Path, default=Path("docs/ab_report.md"), help="default: docs/ab_report.md")
    p.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    p.add_argument(
        "--model-store",
        type=Path,
        help="start a TorchServe of these archives on free loopback ports for "
        "the report and stop it afterwards (default: use the server at --url)",
    )
    _common(p)
    return parser  # fmt: skip


def make_client(args: argparse.Namespace) -> DefectClient:
    options = {"pitch_um": args.pitch, "ignore_classes": args.ignore_classes}
    return DefectClient(args.url, args.model, args.key, args.key_file, args.timeout, args.retries,
                        options={k: v for k, v in options.items() if v is not None})  # fmt: skip


def make_router(args: argparse.Namespace, client: DefectClient) -> DefectClient | ABClient:
    if getattr(args, "ab", None):
        return ABClient(client, split=WeightedSplit.parse(args.ab))
    if getattr(args, "shadow", None):
        pair = [m.strip() for m in args.shadow.split(",")]
        if len(pair) != 2 or not all(pair):
            example = ",".join(model_names()[:2])
            raise ValueError(f"--shadow takes PRIMARY,SHADOW, e.g. {example}; got {args.shadow!r}")
        return ABClient(client, shadow=(pair[0], pair[1]))
    return client


def run_predict(args: argparse.Namespace, argv: list[str]) -> str:
    from client.overlay import write_overlay
    from training.inference.images import write_json

    router = make_router(args, make_client(args))
    layer_id = args.layer_id or args.angles[0].name.rsplit("_a", 1)[0]
    want_mask = args.out is not None or args.overlay is not None
    if isinstance(router, ABClient):
        prediction, comparison = router.predict(args.angles, layer_id, args.threshold, want_mask)
    else:
        prediction, comparison = router.predict(args.angles, None, args.threshold, want_mask, layer_id), None
    result = {"layer_id": layer_id, "model": prediction.model, "latency_ms": round(prediction.latency_ms, 1),
              "attempt_ms": round(prediction.attempt_ms, 1), "attempts": prediction.attempts,
              "answer": prediction.answer}  # fmt: skip
    if comparison is not None:
        result["shadow"] = comparison
    if args.overlay:
        decode_mask(prediction.answer)  # a clear error before any file is written
        write_overlay(args.angles, prediction.answer, args.overlay)
    if args.out:
        write_json(args.out, result)
        return f"{layer_id}: defect {prediction.answer['defect']} ({prediction.model}); wrote {args.out}" + (
            f" and {args.overlay}" if args.overlay else ""
        )
    if "mask" in prediction.answer:
        prediction.answer["mask"]["data"] = prediction.answer["mask"]["data"][:32] + "..."
    return json.dumps(result, indent=1)


def run_batch_command(args: argparse.Namespace, argv: list[str]) -> str:
    from client.batch import run_batch

    router = make_router(args, make_client(args))
    result = run_batch(router, args.raw, args.out, args.summary, args.overlays, args.concurrency, args.threshold)
    wrote = [str(args.out), *(str(p) for p in (args.summary, args.overlays) if p)]
    summary = f"{result.line()}; wrote {', '.join(wrote)}"
    failures = result.failure_line()
    if failures:
        raise LayersFailed(f"{failures}; each layer's error is in {args.out}", summary)
    return summary


def run_ab_report_command(args: argparse.Namespace, argv: list[str]) -> str:
    import dataclasses

    from client.ab_report import command_line, load_labeled, run_ab_report, save
    from training.reports.ab import summary_table, write_report

    layers = load_labeled(args.data, None if args.split == "all" else args.split)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    server = None
    if args.model_store:
        import tempfile

        from training.serving.launcher import LISTENERS, free_port, start

        home = Path(tempfile.mkdtemp(prefix="ab-report-"))
        server = start(
            args.model_store, home, tuple(models), ports={n: free_port() for n in LISTENERS}, foreground=True
        )
        args.url, args.key_file, args.key = server.urls["inference"], server.key_file, None
    try:
        result = run_ab_report(make_client(args), layers, models, args.requests, command_line(argv))
        if server is not None:
            service = f"a TorchServe of {args.model_store} started on loopback for this report"
            result = dataclasses.replace(result, service=service)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.home, ignore_errors=True)
    write_report(result, args.report)
    if args.json:
        save(result, args.json)
    return summary_table(result) + f"\nwrote {args.report}" + (f" and {args.json}" if args.json else "")


RUN = {"predict": run_predict, "batch": run_batch_command, "ab-report": run_ab_report_command}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        message = RUN[args.command](args, argv)
    except ServiceError as err:
        if isinstance(err, LayersFailed):
            print(err.summary)  # what was answered and written, as on success
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
