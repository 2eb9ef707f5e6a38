"""`archive`, `serve` and `stop`: TorchServe archives and the local server; and `bench`, kept for old scripts."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("training")


def add_bench(sub: argparse._SubParsersAction) -> None:
    """Listed in the help only: `main` hands `python -m training bench ...` to `python -m bench model ...`."""
    sub.add_parser("bench", help="the same as `python -m bench model` (kept for old scripts)", add_help=False)


def _archives() -> str:
    from training.inference.variants import VARIANTS

    return ", ".join(v.archive for v in VARIANTS)


def add_archive(sub: argparse._SubParsersAction) -> None:
    from handler.settings import ServingConfig
    from training.inference.variants import BACKENDS, MODEL_PREFIX, VARIANTS
    from training.serving.archive import AUTO

    defaults = ServingConfig()
    p = sub.add_parser(
        "archive",
        help=f"TorchServe archives {_archives()} from an evaluated and quantized checkpoint",
        description="Pack the handler and inference packages, the weights, the served ModelConfig and a "
        "model-config.yaml per registered variant into .mar archives with torch-model-archiver. Needs "
        f"{', '.join(f for v in VARIANTS for f in v.files)} (written by quantize) and decision.json (written by "
        "evaluate) beside the checkpoint. Each variant is served on the backend measured fastest here (--backend "
        "auto), on the threads it will have in the worker.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt (evaluated and quantized)")
    p.add_argument("--out", type=Path, default=Path("model_store"), help="model store folder (default: model_store)")
    p.add_argument("--version", default="1.0", help="model version reported in every answer (default: 1.0)")
    p.add_argument(
        "--prefix", default=MODEL_PREFIX, help=f"model names are <prefix>_<variant> (default: {MODEL_PREFIX})"
    )
    p.add_argument(
        "--backend",
        choices=(AUTO, *BACKENDS),
        default=AUTO,
        help=f"what runs every variant; {AUTO}: time each variant's builds here and serve the fastest (default)",
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
        default=defaults.threads,
        help=f"inference threads per worker, PyTorch or OpenVINO (default: {defaults.threads})",
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
    p.add_argument(
        "--layer-side",
        type=int,
        default=defaults.layer_side,
        help="side in pixels of the layers your camera makes: the worker prepares their shapes at load and the "
        f"backends are timed on one (default: {defaults.layer_side})",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=defaults.tile_size,
        help=f"a layer with a longer side goes through tiles answering for at most this many pixels a side, a "
        f"multiple of 32 (default: {defaults.tile_size})",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=defaults.tile_overlap,
        help=f"pixels shared by neighbouring tiles, at least (default: {defaults.tile_overlap})",
    )
    p.add_argument(
        "--stage",
        type=Path,
        help="keep what each archive packs in STAGE/<model name> and print the torch-model-archiver line that "
        "packs it, to run by hand (README: TorchServe's own commands)",
    )
    p.set_defaults(run=run_archive)


def run_archive(args: argparse.Namespace, argv: list[str]) -> str:
    from handler.settings import ServingConfig
    from training.serving.archive import build_archives

    serving = ServingConfig(
        min_workers=args.workers, max_workers=args.workers, batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay, threads=args.threads, max_image_pixels=args.max_image_pixels,
        layer_side=args.layer_side, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
    )  # fmt: skip
    built = build_archives(args.checkpoint, args.out, serving, args.version, args.prefix, args.backend, args.stage)
    said = "wrote " + ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in built.values())
    if args.stage:
        said += f"; what each packs is kept in {args.stage}/<model name>, for the torch-model-archiver lines above"
    return said


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start TorchServe in the background with every variant's archive and config.properties",
        description=f"Start TorchServe with config.properties and {_archives()} from the model store, wait until "
        "every model answers, and print the endpoints and where the inference key is.",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="default: model_store")
    p.add_argument("--home", type=Path, default=Path("runs/serve"), help="logs and key_file.json (default: runs/serve)")
    p.add_argument("--config", type=Path, default=Path("config.properties"), help="default: config.properties")
    p.add_argument(
        "--probe", nargs=3, type=Path, metavar=("A0", "A1", "A2"), help="then send these three images to both variants"
    )
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace, argv: list[str]) -> str:
    import shlex

    from training.serving.launcher import shown, start, start_command

    server = start(args.model_store, args.home, config=args.config)
    lines = [
        f"TorchServe is running (home {server.home}: its logs and key file), started with (paths from here):",
        f"  {shlex.join(start_command(server, shown))}",
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
    from training.serving.launcher import Server

    said = Server(args.home.resolve(), {}, ()).stop()
    return f"{args.home}: {said or 'stopped'}"


def add_schema(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schema",
        help="write docs/response.schema.json from the typed answer",
        description="Generate the JSON Schema of the service's answers from training/inference/answer.py (and the "
        "request's refusal reasons) and write it atomically; with --check, write nothing and fail when the file "
        "differs.",
    )
    p.add_argument("--out", type=Path, help="default: docs/response.schema.json of this repository")
    p.add_argument("--check", action="store_true", help="only compare, and fail when the file is out of date")
    p.set_defaults(run=run_schema)


def run_schema(args: argparse.Namespace, argv: list[str]) -> str:
    from training.inference.images import write_atomic
    from training.serving.schema import SCHEMA_FILE, render

    out = args.out or SCHEMA_FILE
    text = render()
    if args.check:
        if not out.exists() or out.read_text() != text:
            raise ValueError(f"{out} is out of date with training/inference/answer.py: run `python -m training schema`")
        return f"{out} is up to date"
    write_atomic(out, text.encode())
    return f"wrote {out}"
