"""Process-parallel map with a progress bar, shared by the commands that work layer by layer."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import cv2
from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe the cores


def resolve_workers(workers: int | None, jobs: int) -> int:
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def progress_map(fn: Callable[[T], R], jobs: list[T], workers: int | None, desc: str, unit: str) -> Iterator[R]:
    """Yield fn(job) for every job, in order, from `workers` processes (1: in this process)."""
    n = resolve_workers(workers, len(jobs))
    # spawn, not fork: forking a process whose OpenCV thread pool has run can deadlock the child
    spawn = multiprocessing.get_context("spawn")
    pool_context = ProcessPoolExecutor(n, spawn, _init_worker) if n > 1 else contextlib.nullcontext()
    with pool_context as pool, tqdm(total=len(jobs), desc=desc, unit=unit) as bar:
        results: Iterable[R] = pool.map(fn, jobs, chunksize=1) if pool else map(fn, jobs)
        for result in results:
            bar.update()
            yield result
