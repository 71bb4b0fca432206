"""Data-parallel training under ``torchrun`` (PyTorch's launcher; gloo on CPUs, NCCL on GPUs).

Run any training stage as ``torchrun --nproc_per_node N stages/train_teacher.py ...``: every process
loads the data and models, ``fit`` gives each one a shard of every batch and averages the gradients
over all processes after each backward pass (what DistributedDataParallel does, done on the
parameters so every step loss, multi-head and mutual learning included, is covered), BatchNorm
running statistics are averaged at the end of each epoch, and only rank 0 writes outputs.
Without ``torchrun`` (WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import datetime
import os
from typing import Iterable

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger


# How long a process waits for the others to join (seconds); torch's own default is 30 minutes of silence.
TIMEOUT_VAR = "EDGECOMPRESS_RENDEZVOUS_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
LAUNCH = "launch with `torchrun --nproc_per_node N stages/<stage>.py ...` (it sets WORLD_SIZE, RANK, LOCAL_RANK, " \
         "MASTER_ADDR, MASTER_PORT), or unset WORLD_SIZE for one process"


def _env_number(name: str, default: str | None, kind: type = int) -> float:
    """Environment variable ``name`` as a number, or one line naming it and how to launch."""
    raw = os.environ.get(name, default)
    if raw is None:
        raise EdgeCompressError(f"{name} is not set but WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for several "
                                f"processes: {LAUNCH}")
    try:
        value = kind(raw)
    except ValueError:
        raise EdgeCompressError(f"{name}={raw!r} is not a number: {LAUNCH}") from None
    if value < 0 or (kind is float and value == 0):
        raise EdgeCompressError(f"{name}={raw!r} must be {'> 0' if kind is float else '>= 0'}: {LAUNCH}")
    return value


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (no-op for a single process).

    A malformed or partial environment, or a rendezvous nobody else joins within
    ``$EDGECOMPRESS_RENDEZVOUS_TIMEOUT`` seconds (default 300), is one line naming the variable or the
    MASTER_ADDR:MASTER_PORT it waited on. torch applies the same timeout to every later collective, so it
    also bounds how long one process may run ahead of the others.
    """
    if _env_number("WORLD_SIZE", "1") <= 1 or not torch.distributed.is_available():
        return
    if not torch.distributed.is_initialized():
        rank = int(_env_number("RANK", None))
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise EdgeCompressError(f"{name} is not set but WORLD_SIZE={os.environ['WORLD_SIZE']} asks for "
                                        f"several processes: {LAUNCH}")
        _env_number("MASTER_PORT", None)
        timeout = _env_number(TIMEOUT_VAR, str(DEFAULT_TIMEOUT_S), float)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        # Not silent: a process started by hand with WORLD_SIZE set says what it waits for.
        get_logger("torchrun").info(f"rank {rank} of {os.environ['WORLD_SIZE']}: joining the rendezvous at {where} "
                                    f"(up to {timeout:g} s, {TIMEOUT_VAR})")
        try:
            torch.distributed.init_process_group(backend="nccl" if cuda else "gloo",
                                                 timeout=datetime.timedelta(seconds=timeout))
        except torch.distributed.DistError as e:
            raise EdgeCompressError(
                f"rank {rank} of WORLD_SIZE={os.environ['WORLD_SIZE']} gave up after {timeout:g} s at the rendezvous "
                f"MASTER_ADDR:MASTER_PORT={where}: the other processes never joined ({str(e).splitlines()[0]}); "
                f"start all of them ({LAUNCH}), or raise {TIMEOUT_VAR}") from None
    # Processes on one machine share its cores.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return world()[0] == 0


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """All-reduce and average the gradients of ``params`` over the processes."""
    _, size = world()
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(size)


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running mean/var) over the processes."""
    _, size = world()
    for b in model.buffers():
        if b.is_floating_point():
            torch.distributed.all_reduce(b)
            b.div_(size)


def sum_over_processes(*values: float) -> list[float]:
    """``values`` summed over the processes (for epoch losses and counts)."""
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()
