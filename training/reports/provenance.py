"""Where a generated document came from: the command and the commit of the code that ran it, so a figure can be
traced to the code that produced it and rerun."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@cache
def source_commit() -> str:
    """The checkout's commit (short hash), marked when code differs from it; or why it is unknown. Documents (Markdown
    and docs/, where commands write their reports and figures) do not count: a command that has just written a
    figure has not changed the code that made it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs",
                                  ":!*.md"], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                 check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "an unknown commit (not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes" if changed else "")


def produced_by(program: str) -> str:
    """The opening line of a generated document: which command wrote it, from which code."""
    return f"Produced by `{program}` at {source_commit()}."
