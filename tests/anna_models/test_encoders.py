"""Domain models: shapes, exactness of right padding without packing, empty histories, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anna_models.batching import EventTable
from anna_models.encoders import DomainModel, EncoderConfig, ModelConfig
from anna_models.event_encoder import embedding_size
from anna_models.sequences import Sequences


def small_sequences(lengths: list[int], seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    e = int(offsets[-1])
    return Sequences(
        offsets=offsets,
        categorical={"mcc": rng.integers(1, 20, e).astype(np.int32)},
        numeric={"amount": rng.normal(size=e).astype(np.float32)},
        time_features=rng.random((e, 4)).astype(np.float32),
    )


def make_model(
    architecture: str = "gru", n_outputs: int = 1, domains: tuple[str, ...] = ("card",)
) -> DomainModel:
    torch.manual_seed(0)
    encoder = EncoderConfig(
        categorical={"mcc": 20}, n_dense=5, architecture=architecture, hidden=16, max_len=64
    )
    config = ModelConfig(
        encoders={d: encoder for d in domains}, task_type="binary", n_outputs=n_outputs, hidden=16
    )
    return DomainModel(config).eval()


def run(model: DomainModel, seqs: Sequences, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = EventTable(seqs).batch(np.asarray(rows))
    with torch.no_grad():
        return model({d: batch for d in model.config.domains})


def test_embedding_size_grows_with_vocab_and_is_capped() -> None:
    sizes = [embedding_size(v) for v in (3, 10, 100, 1000, 100_000)]
    assert sizes == sorted(sizes) and sizes[-1] == 32 and sizes[0] >= 2


@pytest.mark.parametrize("architecture", ["gru", "lstm", "transformer"])
def test_a_rows_output_does_not_depend_on_how_far_its_batch_is_padded(architecture: str) -> None:
    seqs = small_sequences([5, 40, 0, 1])
    model = make_model(architecture, n_outputs=3)
    alone_out, alone_emb = run(model, seqs, [0])  # padded to 5
    batch_out, batch_emb = run(model, seqs, [0, 1, 2, 3])  # padded to 40
    assert batch_out.shape == (4, 3) and batch_emb.shape == (4, 16)
    torch.testing.assert_close(alone_out[0], batch_out[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_emb[0], batch_emb[0], atol=1e-5, rtol=1e-5)


def test_empty_histories_get_the_learned_no_history_vector() -> None:
    seqs = small_sequences([0, 7, 0])
    model = make_model()
    out, _ = run(model, seqs, [0, 1, 2])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[2])
    with torch.no_grad():
        model.sequences[0].no_history.add_(1.0)
    moved, _ = run(model, seqs, [0, 1, 2])
    assert not torch.allclose(moved[0], out[0]) and torch.allclose(moved[1], out[1])


def test_unknown_architecture_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="gru"):
        make_model("mamba")


def test_save_and_load_reproduce_outputs(tmp_path: Path) -> None:
    seqs = small_sequences([3, 9, 0])
    model = make_model("lstm")
    model.save(tmp_path / "m")
    loaded = DomainModel.load(tmp_path / "m")
    assert loaded.config == model.config
    torch.testing.assert_close(run(model, seqs, [0, 1, 2])[0], run(loaded, seqs, [0, 1, 2])[0])


def test_a_fusion_model_reads_each_domain_with_its_own_encoder() -> None:
    card, credit = small_sequences([4, 0, 9], seed=1), small_sequences([0, 2, 30], seed=2)
    model = make_model(domains=("card", "credit"))
    table_card, table_credit = EventTable(card), EventTable(credit)
    with torch.no_grad():
        out, emb = model({"card": table_card.batch(np.arange(3)), "credit": table_credit.batch(np.arange(3))})
        changed, _ = model(
            {
                "card": table_card.batch(np.arange(3)),
                "credit": EventTable(small_sequences([0, 2, 30], seed=9)).batch(np.arange(3)),
            }
        )
    assert out.shape == (3, 1) and emb.shape == (3, 16)
    assert torch.allclose(changed[0], out[0]) and not torch.allclose(
        changed[2], out[2]
    )  # row 0 has no credit


@pytest.mark.parametrize("architecture", ["gru", "lstm"])
def test_the_folded_projection_computes_what_the_projection_then_the_recurrence_computes(
    architecture: str,
) -> None:
    # hidden 32 > width / 1.5, so DomainModel folds the projection into the first layer's input weights.
    torch.manual_seed(0)
    encoder = EncoderConfig(categorical={"mcc": 20}, n_dense=5, architecture=architecture, hidden=32,
                            layers=2)
    model = DomainModel(ModelConfig(encoders={"card": encoder}, task_type="binary", n_outputs=1, hidden=16))
    events, sequence = model.events[0], model.sequences[0]
    batch = EventTable(small_sequences([6, 0, 13, 1])).batch(np.arange(4))
    features = events.features(batch.categorical, batch.dense).detach()
    assert features.shape[-1] < 1.5 * 32
    model.eval()
    plain = sequence(events.projection(features), batch.lengths)
    folded = sequence.forward_features(features, batch.lengths, events.projection)
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
    # The gradients reach the projection and the recurrence as they would unfolded.
    grads = [torch.autograd.grad(out.square().sum(), [events.projection.weight, sequence.rnn.weight_ih_l0])
             for out in (folded, sequence(events.projection(features), batch.lengths))]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_pooling_reads_only_real_events() -> None:
    model = make_model()
    sequence = model.sequences[0]
    states = torch.randn(5, 2, 16)  # (T, B, H): row 0 has 5 events, row 1 has 2
    states[2:, 1] = 99.0  # padding after row 1's events must not count
    pooled = sequence._pool(states, torch.tensor([5, 2]))
    last, mean, peak = pooled[:, :16], pooled[:, 16:32], pooled[:, 32:48]
    torch.testing.assert_close(last[1], states[1, 1])
    torch.testing.assert_close(mean[1], states[:2, 1].mean(0))
    torch.testing.assert_close(peak[1], states[:2, 1].amax(0))
    torch.testing.assert_close(peak[0], states[:, 0].amax(0))


def test_training_dropout_masks_whole_features_of_a_row_over_time() -> None:
    model = make_model()
    events = model.events[0].train()
    events.dropout.p = 0.5
    batch = EventTable(small_sequences([30, 30])).batch(np.arange(2))
    torch.manual_seed(0)
    features = events.features(batch.categorical, batch.dense)
    dropped = features == 0  # (B, T, width); an embedding or dense value is rarely exactly 0
    assert dropped.any()
    assert torch.equal(dropped.all(dim=1), dropped.any(dim=1))  # a feature is dropped at every step or none
    events.eval()
    assert not (events.features(batch.categorical, batch.dense) == 0).all(dim=1).any()
