"""Models exported side by side: spawned processes that share the cores, each able to rebuild a model whose
class comes from the user's script (a brought model) before it arrives."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import multiprocessing
import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger

log = get_logger("candidates")

T = TypeVar("T")
R = TypeVar("R")


def _start_worker(threads: int, brought: list[tuple[str, str]]) -> None:
    """A spawned export process: its share of the cores, and the user's scripts loaded under the names the
    parent gave them, before any model arrives (unpickling one looks its class up by module name)."""
    torch.set_num_threads(threads)
    for name, path in brought:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


class _ClassRecorder(pickle.Pickler):
    """A pickler that notes the module of every class it pickles by reference (what the receiver imports)."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), pickle.HIGHEST_PROTOCOL)
        self.modules: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            self.modules.add(obj.__module__)
        return NotImplemented  # pickle it as usual


def _brought(modules: set[str]) -> list[tuple[str, str]]:
    """(name, file) of the ``modules`` a spawned process cannot import by name: scripts loaded from a path
    (a brought model, ``usermodel.load_factory``). The parent's ``__main__`` is re-run by spawn itself."""
    out = []
    for name in sorted(modules):
        origin = getattr(getattr(sys.modules.get(name), "__spec__", None), "origin", None)
        if name in ("__main__", "__mp_main__") or "." in name or not origin or not Path(origin).is_file():
            continue
        if importlib.machinery.PathFinder.find_spec(name) is None:  # not on sys.path, which the workers share
            out.append((name, origin))
    return out


def in_processes(fn: Callable[[T], R], items: list[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]``, run by up to ``workers`` spawned processes that share the cores; results in
    the order of ``items``. A model whose class comes from the user's script is rebuilt in each process from
    that script; serial when one worker would do or an item cannot be pickled at all."""
    workers = min(workers, len(items))
    brought: list[tuple[str, str]] = []
    if workers > 1:
        recorder = _ClassRecorder()
        try:
            recorder.dump(items)
            brought = _brought(recorder.modules)
        except Exception as e:  # pickling user objects raises many types
            what = str(e).split(":")[0] or type(e).__name__
            log.info(f"exporting one model at a time: a model holds something that cannot be copied "
                     f"to another process ({what}); candidates.workers needs models made of importable classes")
            workers = 1
    if workers <= 1:
        return [fn(x) for x in items]
    # spawn, not fork: a forked child inherits torch's thread pools mid-use and can hang.
    threads = max(1, (os.cpu_count() or 1) // workers)
    log.info(f"exporting {len(items)} models in {workers} processes ({threads} thread(s) each)")
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                 initargs=(threads, brought)) as ex:
            return list(ex.map(fn, items))
    except BrokenProcessPool as e:
        raise EdgeCompressError(f"an export process of the candidate pool died (the system stops one that runs out "
                                f"of memory); set candidates.workers to 1 (or fewer than {workers}) in params.yaml "
                                f"and re-run dvc repro") from e
