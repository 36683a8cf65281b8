"""Domain models: shapes, exactness of right padding without packing, empty histories, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anna_models.batching import EventTable
from anna_models.encoders import DomainModel, EncoderConfig, ModelConfig, embedding_size
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
