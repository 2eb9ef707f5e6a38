"""docs/image.md: the serving image's figures from what `python -m bench image` measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from training.inference.images import write_atomic
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no podman
    from bench.image import ImageBench


README_START = "<!-- python -m bench image: start -->"  # the README's container section holds the table between
README_END = "<!-- python -m bench image: end -->"


def table(result: ImageBench) -> list[str]:
    """The figures as a Markdown table, for docs/image.md and the README's container section."""
    container, host = result.latency["container"], result.latency["this machine"]
    sigterm = result.sigterm
    return [
        "| | |",
        "|---|---|",
        f"| image | `{result.tag}` on `{result.base}`: {result.size_bytes / 1e9:.2f} GB |",
        f"| build without the layer cache (base image and wheelhouse already here) | {result.build_s['without cache']:.0f} s |",
        f"| build again, every layer from the cache | {result.build_s['with cache']:.0f} s |",
        f"| `podman run` to the first answer ({result.model}) | {result.first_answer_s:.1f} s |",
        f"| one {result.size}² layer, {result.model}, in the container: median (p90) | {container['median_ms']:.1f} "
        f"({container['p90_ms']:.1f}) ms, {container['runs']} runs |",
        f"| the same archive served on this machine, taking turns | {host['median_ms']:.1f} ({host['p90_ms']:.1f}) ms "
        f"(container / this machine: {container['median_ms'] / host['median_ms']:.2f}) |",
        f"| SIGTERM with {sigterm['in_flight']} {sigterm['size']}² layers in flight ({sigterm['model']}) | "
        f"{sigterm['answered']} answered, exit code {sigterm['exit_code']}, {sigterm['drain_s']:.1f} s from SIGTERM "
        "to exit |",
    ]  # fmt: skip


def render(result: ImageBench) -> str:
    return "\n".join([
        "# The serving image",
        "",
        f"{produced_by('python -m bench image')} Regenerate (podman, runc and debootstrap; the archives of the model "
        "store):",
        "",
        "```bash",
        result.command,
        "```",
        "",
        f"Machine: {result.cpu}. One run; the machine is shared, so quote the ratio of the two latencies, measured "
        "taking turns, rather than either alone.",
        "",
        *table(result),
        "",
        "The image's size is mostly PyTorch: the only torch wheel of the pinned version that this machine's package "
        "index holds is the CUDA build, which needs NVIDIA's libraries to import even on a CPU. A build with an empty "
        "wheelhouse takes torch and torchvision from PyTorch's CPU index instead.",
        "",
    ])  # fmt: skip


def readme_block(result: ImageBench) -> str:
    """What the README holds between its markers: the table, what produced it and where the rest is."""
    return "\n".join([
        README_START,
        *table(result),
        "",
        f"{produced_by('python -m bench image')} Machine: {result.cpu}, one run (the command and notes: "
        "[docs/image.md](docs/image.md)).",
        README_END,
    ])  # fmt: skip


def readme_span(readme: str) -> tuple[int, int]:
    """Where the README's block of the image's figures starts and ends (after its end marker)."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {README_START} ... {README_END} block for the image's figures")
    return start, end + len(README_END)


def with_readme_block(readme: str, result: ImageBench) -> str:
    """`readme` with its block of the image's figures replaced by `readme_block`."""
    start, end = readme_span(readme)
    return readme[:start] + readme_block(result) + readme[end:]


def write_report(result: ImageBench, path: Path, readme: Path | None = None) -> None:
    """docs/image.md at `path`, and the table in `readme`'s container section when given."""
    if readme is not None:
        text = with_readme_block(Path(readme).read_text(), result)  # refused before anything is written
    write_atomic(Path(path), render(result).encode())
    if readme is not None:
        write_atomic(Path(readme), text.encode())


def summary(result: ImageBench) -> str:
    sigterm = result.sigterm
    return (f"{result.size_bytes / 1e9:.2f} GB, first answer {result.first_answer_s:.1f} s after start, "
            f"{sigterm['answered']} of {sigterm['in_flight']} in flight answered at SIGTERM")  # fmt: skip
