"""Data-parallel training under ``torchrun`` (PyTorch's launcher; gloo on CPUs, NCCL on GPUs).

Run any training stage as ``torchrun --nproc_per_node N stages/train_teacher.py ...``: every process
loads the data and models, ``fit`` gives each one a shard of every batch and averages the gradients
over all processes after each backward pass (what DistributedDataParallel does, done on the
parameters so every step loss, multi-head and mutual learning included, is covered), BatchNorm
running statistics are averaged at the end of each epoch, and only rank 0 writes outputs.
Without ``torchrun`` (WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch
from torch import nn


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return
    if not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
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
