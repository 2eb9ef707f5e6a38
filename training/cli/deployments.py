"""`deployments`: the TorchServe settings of the serving image and the cluster, generated from config.properties."""

from __future__ import annotations

import argparse


def add_deployments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deployments",
        help="write docker/config.properties and k8s/serving-config.yaml from config.properties",
        description="Render the TorchServe settings of the serving image (docker/config.properties) and of the "
        "cluster's ConfigMap (k8s/serving-config.yaml, one entry per registered variant) from the repository's "
        "config.properties and the differences declared in training/serving/deployments.py. Run it after changing "
        "either; tests/test_deployments.py fails until the files are rendered again.",
    )
    p.add_argument(
        "--check", action="store_true", help="write nothing; fail with the list of files that are out of date"
    )
    p.set_defaults(run=run_deployments)


def run_deployments(args: argparse.Namespace, argv: list[str]) -> str:
    from training.inference.images import write_atomic
    from training.serving import deployments

    repo = deployments.ROOT
    rendered = deployments.render(repo / "config.properties")
    outdated = deployments.stale(rendered, repo)
    if args.check:
        if outdated:
            raise ValueError(
                f"out of date with config.properties: {', '.join(outdated)}; run `{deployments.COMMAND}` and commit "
                "the result"
            )
        return f"up to date with config.properties: {', '.join(rendered)}"
    for name, text in rendered.items():
        write_atomic(repo / name, text.encode())
    return f"wrote {', '.join(rendered)} from config.properties ({len(outdated)} of {len(rendered)} changed)"
