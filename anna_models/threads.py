"""Independent pieces of torch work side by side: one Python thread each, one torch thread each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
# Pools are kept: a recurrence asks for threads twice a batch. With a new pool each time, training on the demo
# ran at 169-196k events/s, against 250-259k with kept pools (bench/throughput.py --skip uniform, 2 threads).
# Work never nests: inside a worker torch has one thread, so it asks for no pool.
_pools: dict[int, ThreadPoolExecutor] = {}


def on_one_thread_each(work: Callable[[Item], None], items: Sequence[Item], threads: int) -> None:
    """``work(item)`` for every item, on ``threads`` Python threads whose torch calls use one thread each.

    For independent work (inference batches, row ranges of a recurrence): a thread keeps its core in one
    recurrence from start to end, while torch's own threads would split every small per-step operation and
    meet at a barrier after each, which stalls badly when other processes share the cores (10× slower at a
    load of 10 on 2 cores). torch and ctypes release the GIL while they compute. Afterwards torch has the
    thread count it had before; a worker's exception is raised here.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="anna-torch")
    pool = _pools[threads]
    try:
        list(pool.map(work, items))  # list(): a worker's exception is raised here
    finally:
        torch.set_num_threads(before)
