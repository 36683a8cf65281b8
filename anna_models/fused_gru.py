"""A faster single-layer GRU recurrence on CPU: a batch's whole recurrence in one compiled call.

PyTorch's CPU GRU runs every time step as about ten operations over the (rows, 3 × hidden) gate tensors
(add, sigmoid, tanh, sub, mul, ...), each a pass through memory with its own dispatch. Here the C loops
(``fused_gru.c``) run all of a batch's steps: each step's product h · W_hhᵀ + b_hh is computed six rows at a
time in registers, and the gates and the new state right after it; the backward pass mirrors it, and
W_hh's gradient is one torch product over all steps at the end. No step returns to Python, so short
sequences and small batches do not pay a per-step call. Same formulas, same weights, so a model trained
either way loads either way. Scoring (``gru_pooled``) also makes the input gates and pools the states as
it goes, and rows whose history has ended cost nothing.

The C source is compiled once per machine with the system's C compiler (``$CC``, else ``cc``) into
``$ANNA_CACHE_DIR`` (default ``~/.cache/anna``), keyed by the source, the flags and the CPU's features.
Without a compiler, or with ``ANNA_FUSED_GRU=0``, ``available()`` is False and models use torch's GRU.

Rows are independent, so with several torch threads a batch's rows are split between Python threads that
each run their rows' whole recurrence on one core (ctypes releases the GIL while the C runs), instead of
every small per-step operation being split across cores and meeting at a barrier.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anna_models.threads import on_one_thread_each

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused_gru.c")
FLAGS = ["-O3", "-ffast-math", "-march=native", "-fPIC", "-shared"]
MIN_ROWS_PER_THREAD = 32  # splitting 16-60-row batches in two ran no faster (2 threads, 2026-12-08)

_library: ctypes.CDLL | None = None
_tried = False


def available() -> bool:
    """Whether the compiled loops can be used here (compiling them on the first call)."""
    return _load() is not None


def gru(gates_in: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor) -> torch.Tensor:
    """States (T, B, H) of a GRU from h₀ = 0, given its input gates (T, B, 3H) = x · W_ihᵀ + b_ih.

    Differentiable in all three arguments; float32 CPU tensors only (check ``available()`` first).
    """
    if torch.is_grad_enabled() and (gates_in.requires_grad or weight_hh.requires_grad
                                    or bias_hh.requires_grad):
        return _FusedGRU.apply(gates_in, weight_hh, bias_hh)
    with torch.no_grad():
        return _forward(gates_in.contiguous(), weight_hh, bias_hh, keep=False)[0]


@dataclass
class InputGates:
    """A GRU's input gates for scoring, time-major, left in parts that the compiled step adds up per row:
    ``bias + Σ_f tables[codes[..., f]] + x · weight`` (T, B, 3H).

    ``tables`` (V, 3H) are embeddings already multiplied by their columns of W_ih, and ``codes`` (T, B, F)
    index its rows; ``x`` (T, B, k) are the other features and ``weight`` (k, 3H) their rows of W_ihᵀ.
    Float32 and int64 CPU tensors.
    """

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    tables: torch.Tensor | None = None


def gru_pooled(inputs: InputGates, weight_hh: torch.Tensor, bias_hh: torch.Tensor, lengths: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scoring: (state after each row's last event, sum and max of its states), each (B, H).

    Row b's steps stop at ``lengths[b]``; neither the input gates nor the (T, B, H) states are stored.
    Rows without events get zeros. Not differentiable. With several torch threads the rows are split
    between them, each part one call of the compiled loop (``anna_gru_score`` in ``fused_gru.c``).
    """
    lib = _load()
    assert lib is not None
    x = inputs.x.detach().float().contiguous()
    _, rows, n_x = x.shape
    hidden = weight_hh.shape[1]
    width = 3 * hidden
    weight = inputs.weight.detach().float().contiguous()
    bias = None if inputs.bias is None else inputs.bias.detach().float().contiguous()
    codes = None if inputs.codes is None else inputs.codes.to(torch.int64).contiguous()
    tables = None if inputs.tables is None else inputs.tables.detach().float().contiguous()
    n_codes = 0 if codes is None else codes.shape[-1]
    if weight.shape != (n_x, width):
        raise ValueError(f"x is {n_x} wide: weight must be ({n_x}, {width}), not {tuple(weight.shape)}")
    lengths = lengths.to(torch.int64).contiguous()
    last, total, peak, state = (x.new_empty(rows, hidden) for _ in range(4))
    weight_t, bias_hh = weight_hh.detach().t().float().contiguous(), bias_hh.detach().float().contiguous()

    def run(a: int, b: int) -> None:
        # Rows a..b of every step: x and codes are (T, rows, ·), so the block starts a rows in.
        lib.anna_gru_score(b - a, hidden, rows, _at(lengths, a), _at(bias), n_codes, _at(codes, a),
                           _at(tables), n_x, _at(x, a), _at(weight), _at(weight_t), _at(bias_hh),
                           *(_at(part, a) for part in (state, total, peak, last)))

    _split_rows(run, rows)
    return last, total, peak


class _FusedGRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gates_in: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
                ) -> torch.Tensor:
        out, gates_h, saved = _forward(gates_in.contiguous(), weight_hh, bias_hh, keep=True)
        ctx.save_for_backward(weight_hh, out, gates_h, saved)
        return out

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weight_hh, out, gates_h, saved = ctx.saved_tensors
        steps, rows, hidden = out.shape
        d_out = d_out.contiguous()
        d_gi, d_gh = torch.empty_like(gates_h), torch.empty_like(gates_h)
        d_next = out.new_empty(rows, hidden)
        weight = weight_hh.detach().float().contiguous()
        lib = _load()
        assert lib is not None

        def run(a: int, b: int) -> None:
            lib.anna_gru_backward_seq(steps, b - a, hidden, rows, *(_at(part, a) for part in (
                d_out, out, gates_h, saved)), weight.data_ptr(), _at(d_gi, a), _at(d_gh, a), _at(d_next, a))

        _split_rows(run, rows)
        h_prev = torch.cat([out.new_zeros(1, rows, hidden), out[:-1]]).view(steps * rows, hidden)
        d_gh_flat = d_gh.view(steps * rows, 3 * hidden)
        return d_gi, d_gh_flat.t() @ h_prev, d_gh_flat.sum(0)


def _at(tensor: torch.Tensor | None, row: int = 0) -> int | None:
    """The address of ``row`` in a contiguous (rows,), (rows, ·) or (steps, rows, ·) tensor's first step;
    None for no tensor (the C loops read NULL as "no such part")."""
    if tensor is None:
        return None
    return tensor.data_ptr() + row * (tensor.shape[-1] if tensor.dim() > 1 else 1) * tensor.element_size()


def _forward(gates_in: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor, keep: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(states, per-step h·W_hhᵀ + b_hh, per-step [r | z | n]); the last two only with ``keep``."""
    lib = _load()
    assert lib is not None
    steps, rows, width = gates_in.shape
    hidden = width // 3
    out = gates_in.new_empty(steps, rows, hidden)
    # For the backward pass every step's gates stay; at inference one step's worth is reused.
    gates_h = gates_in.new_empty(steps if keep else 1, rows, width)
    saved = gates_in.new_empty(steps if keep else 1, rows, width)
    weight_t = weight_hh.detach().t().float().contiguous()
    bias = bias_hh.detach().float().contiguous()

    def run(a: int, b: int) -> None:
        lib.anna_gru_forward_seq(steps, b - a, hidden, rows, int(keep), _at(gates_in, a), weight_t.data_ptr(),
                                 bias.data_ptr(), *(_at(part, a) for part in (out, gates_h, saved)))

    _split_rows(run, rows)
    return out, gates_h, saved


def _split_rows(run: Callable[[int, int], None], rows: int) -> None:
    """``run(a, b)`` over row ranges covering ``rows``: one per torch thread, each on one core."""
    threads = torch.get_num_threads()
    parts = max(1, min(threads, rows // MIN_ROWS_PER_THREAD))
    if parts == 1:
        run(0, rows)
        return
    edges = [rows * i // parts for i in range(parts + 1)]
    on_one_thread_each(lambda part: run(*part), list(zip(edges[:-1], edges[1:], strict=True)), parts)


def _load() -> ctypes.CDLL | None:
    global _library, _tried
    if not _tried:
        _tried = True
        if os.environ.get("ANNA_FUSED_GRU", "1") != "0":
            try:
                _library = _compile()
            except (OSError, subprocess.SubprocessError) as error:
                log.warning("the fused GRU loops could not be built (%s); using torch's GRU", error)
    return _library


def _compile() -> ctypes.CDLL:
    """The shared library for this source, flags and CPU: built once, then loaded from the cache."""
    compiler = os.environ.get("CC", "cc")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), _cpu_signature().encode()]))
    cache = Path(os.environ.get("ANNA_CACHE_DIR") or Path.home() / ".cache" / "anna")
    path = cache / f"fused_gru-{key.hexdigest()[:16]}.so"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed: processes building at once never load half a file.
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            built = Path(tmp) / path.name
            subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], check=True, capture_output=True,
                           timeout=120)
            os.replace(built, path)
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.anna_gru_forward_seq.argtypes = [i64, i64, i64, i64, i64, *[ptr] * 6]
    lib.anna_gru_backward_seq.argtypes = [i64, i64, i64, i64, *[ptr] * 8]
    lib.anna_gru_score.argtypes = [i64, i64, i64, ptr, ptr, i64, ptr, ptr, i64, *[ptr] * 8]
    for name in ("anna_gru_forward_seq", "anna_gru_backward_seq", "anna_gru_score"):
        getattr(lib, name).restype = None
    return lib


def _cpu_signature() -> str:
    """The machine and its instruction-set extensions: -march=native code must not reach another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor()
