"""The fused CPU GRU computes what torch's GRU computes, forwards and backwards, and falls back cleanly."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from anna_models import fused_gru
from anna_models.batching import EventTable
from anna_models.encoders import DomainModel, EncoderConfig, ModelConfig
from anna_models.event_encoder import LOOKUP_MAX_VOCAB
from anna_models.sequences import Sequences


def test_it_is_built_wherever_a_c_compiler_is() -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.fail("no C compiler here: models would train on torch's slower GRU")
    assert fused_gru.available()


@pytest.mark.parametrize(("steps", "rows", "hidden", "threads"),
                         [(7, 5, 32, 1), (40, 70, 64, 2), (3, 1, 128, 1), (25, 130, 16, 2), (9, 70, 20, 2)])
def test_states_and_every_gradient_match_torch(steps: int, rows: int, hidden: int, threads: int) -> None:
    # 70 and 130 rows on 2 threads: the rows are split between threads and must not interfere.
    torch.manual_seed(steps)
    rnn = nn.GRU(9, hidden)
    for param in rnn.parameters():
        nn.init.uniform_(param, -0.6, 0.6)  # larger than the default, so gates saturate somewhere
    x = torch.randn(steps, rows, 9, requires_grad=True)
    weight = torch.randn(steps, rows, hidden)  # a loss that weighs every step's state differently
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want = rnn(x)[0]
        want_grads = torch.autograd.grad((want * weight).sum(), [x, *rnn.parameters()])
        got = fused_gru.gru(torch.nn.functional.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0), rnn.weight_hh_l0,
                            rnn.bias_hh_l0)
        got_grads = torch.autograd.grad((got * weight).sum(), [x, *rnn.parameters()])
        with torch.inference_mode():
            gates = x @ rnn.weight_ih_l0.t() + rnn.bias_ih_l0
            scored = fused_gru.gru(gates, rnn.weight_hh_l0, rnn.bias_hh_l0)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(scored, want.detach(), atol=2e-6, rtol=1e-5)
    for name, g, w in zip(["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh"], got_grads, want_grads,
                          strict=True):
        # Sums over every step and row, in another order: compare on the gradient's own scale.
        scale = w.abs().max().item()
        assert (g - w).abs().max().item() <= 2e-5 * scale, name


@pytest.mark.parametrize(("threads", "hidden"), [(1, 16), (2, 16), (1, 20)])
def test_scoring_pools_each_row_over_its_own_events_only(threads: int, hidden: int) -> None:
    # hidden 20: 60 gate columns, not a multiple of the compiled product's 16-column tiles
    torch.manual_seed(1)
    rnn = nn.GRU(6, hidden)
    lengths = torch.tensor([12, 0, 1, 7, 12, 3] * 12)  # 72 rows: split between threads when there are 2
    x = torch.randn(12, len(lengths), 6)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            states = rnn(x)[0]
            gates_in = fused_gru.InputGates(x, weight=rnn.weight_ih_l0.t(), bias=rnn.bias_ih_l0)  # no tables
            last, total, peak = fused_gru.gru_pooled(gates_in, rnn.weight_hh_l0, rnn.bias_hh_l0, lengths)
    finally:
        torch.set_num_threads(before)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            assert not last[b].any() and not total[b].any() and not peak[b].any()
            continue
        torch.testing.assert_close(last[b], states[n - 1, b], atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(total[b], states[:n, b].sum(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(peak[b], states[:n, b].amax(0), atol=2e-6, rtol=1e-5)


def sequences_with(vocab: dict[str, int], lengths: list[int], seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    events = int(offsets[-1])
    return Sequences(
        offsets=offsets, categorical={name: rng.integers(1, size, events).astype(np.int32)
                                      for name, size in vocab.items()},
        numeric={"amount": rng.normal(size=events).astype(np.float32)},
        time_features=rng.random((events, 4)).astype(np.float32),
    )


LARGE = LOOKUP_MAX_VOCAB + 1  # embedded and multiplied when scoring, not looked up


@pytest.mark.parametrize(("vocab", "threads"), [
    ({"mcc": 20}, 1),  # scoring looks the input gates up
    ({"channel": 4, "mcc": 20, "merchant": LARGE}, 2),  # tables and a product; rows split between threads
    ({"merchant": LARGE}, 1),  # no table
    ({}, 1),  # no categorical feature at all
])
def test_an_encoder_scores_the_same_with_the_fused_gru_and_without(
    monkeypatch: pytest.MonkeyPatch, vocab: dict[str, int], threads: int
) -> None:
    torch.manual_seed(0)
    config = EncoderConfig(categorical=vocab, n_dense=5, architecture="gru", hidden=32)
    model = DomainModel(ModelConfig(encoders={"card": config}, task_type="binary", n_outputs=1, hidden=16))
    lengths = [6, 0, 13, 1] * 20
    batch = EventTable(sequences_with(vocab, lengths)).batch(np.arange(len(lengths)))
    model.eval()  # no dropout draws: both passes must see the same inputs
    out, _ = model({"card": batch})
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            scored, _ = model({"card": batch})  # scoring: gates from the tables, pooled as the steps run
    finally:
        torch.set_num_threads(before)
    fused_grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    monkeypatch.setattr(fused_gru, "available", lambda: False)  # as on a machine without a compiler
    plain, _ = model({"card": batch})
    plain_grads = torch.autograd.grad(plain.sum(), list(model.parameters()))
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scored, plain.detach(), atol=1e-5, rtol=1e-5)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert (got - want).abs().max().item() <= 2e-5 * want.abs().max().item()


def test_switched_off_or_without_a_compiler_it_steps_aside(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(fused_gru, "_tried", False)
    monkeypatch.setattr(fused_gru, "_library", None)
    monkeypatch.setenv("ANNA_FUSED_GRU", "0")
    assert not fused_gru.available()
    monkeypatch.setattr(fused_gru, "_tried", False)
    monkeypatch.setenv("ANNA_FUSED_GRU", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("ANNA_CACHE_DIR", str(tmp_path / "cache"))
    assert not fused_gru.available()  # a warning, then torch's GRU: training still works
