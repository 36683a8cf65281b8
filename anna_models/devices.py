"""Where a process's torch work runs: its thread counts, CPU or CUDA, bf16 autocast on a GPU, and where
training batches come from."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

# Event tables may take at most this share of the GPU's free memory; larger ones stay on the host and
# batches travel in pinned memory instead.
DEVICE_TABLE_SHARE = 0.5


def use_threads(threads: int) -> None:
    """Run this process's torch work on ``threads`` threads (domains train in parallel processes).

    Intra-op threads split each operation; inter-op threads would run independent operations side by
    side, which eager training never asks for, so one is enough and leaves the cores to the other
    domains' processes. PyTorch fixes the inter-op pool at its first parallel work; later calls keep it.
    """
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already started (e.g. a second model in the same process): the pool it has stays


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (no loss scaler needed); CPU stays in float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def data_placement(device: torch.device, table_bytes: int, free_bytes: int) -> str:
    """Where batches come from: ``host`` (CPU training), ``device`` (event tables copied to the GPU once,
    batches gathered there) or ``pinned`` (tables too large for the GPU: gathered on the host into
    page-locked memory and copied asynchronously)."""
    if device.type != "cuda":
        return "host"
    return "device" if table_bytes <= DEVICE_TABLE_SHARE * free_bytes else "pinned"
