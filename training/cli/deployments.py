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


def add_image(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    from training.serving import image

    p = sub.add_parser(
        "image",
        help="build the serving image (docker/Dockerfile) with podman",
        description="Build the serving image with podman from the archives in --archives: on a Debian bookworm "
        f"base (the registry's {image.REGISTRY_BASE}, or {image.LOCAL_BASE} made here with debootstrap when no "
        f"registry answers), its Python packages from a wheelhouse ({image.WHEELHOUSE.relative_to(image.ROOT)}, "
        "downloaded from the pinned docker/requirements-serving.txt when a pin is missing). podman, runc and "
        "debootstrap are installed with apt-get when missing and running as root.",
    )
    p.add_argument(
        "--archives", type=Path, default=Path("model_store"), help="folder of the archives (default: model_store)"
    )
    p.add_argument("--tag", default=image.IMAGE, help=f"image name (default: {image.IMAGE})")
    p.add_argument("--base", help="base image, any Debian bookworm (default: found or made, see above)")
    p.add_argument(
        "--wheelhouse",
        type=Path,
        default=image.WHEELHOUSE,
        help="folder of wheels for every pin (default: %(default)s)",
    )
    p.set_defaults(run=run_image)


def run_image(args: argparse.Namespace, argv: list[str]) -> str:
    from training.serving import image

    built = image.build(args.archives, args.tag, args.base, args.wheelhouse)
    return f"built {built.tag} on {built.base} in {built.seconds:.0f} s: {built.size_bytes / 1e9:.2f} GB"
