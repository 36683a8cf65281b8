"""Training one domain encoder with early stopping on the user's metric, and batch inference.

``predict`` returns raw outputs: logits (binary (N,), multiclass (N, C)) or the regression
prediction in the target's own units (N,); ``to_scores`` turns them into what metrics read.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from anna_models.batching import EventTable, plan_batches
from anna_models.config import TrainParams
from anna_models.encoders import DomainModel, EncoderConfig
from anna_models.metrics import compute_metric, is_better
from anna_models.sequences import TIME_FEATURES, Sequences

Progress = Callable[..., None]
PREDICT_BATCH = 512


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_scores(task_type: str, outputs: np.ndarray) -> np.ndarray:
    """Raw outputs → metric inputs: P(class 1), class probabilities, or the prediction itself."""
    if task_type == "binary":
        return 1.0 / (1.0 + np.exp(-np.clip(outputs, -50, 50)))
    if task_type == "multiclass":
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return outputs


def build_config(
    seqs: Sequences,
    *,
    task_type: str,
    classes: list,
    manifest: dict,
    params: TrainParams,
    y_train: np.ndarray,
) -> EncoderConfig:
    """The model's shape from the mart manifest (vocab sizes) and the task."""
    features = manifest.get("features", {})
    vocab = {}
    for name in sorted(seqs.categorical):
        declared = features.get(name, {}).get("vocab_size")
        observed = int(seqs.categorical[name].max(initial=1)) + 1
        vocab[name] = int(declared) if declared else observed
    y = np.asarray(y_train, dtype=np.float64)
    regression = task_type == "regression" and len(y) > 0
    return EncoderConfig(
        categorical=vocab,
        n_dense=len(seqs.numeric) + len(TIME_FEATURES),
        n_outputs=len(classes) if task_type == "multiclass" else 1,
        task_type=task_type,
        architecture=params.architecture,
        hidden=params.hidden,
        layers=params.layers,
        dropout=params.dropout,
        max_len=params.max_len,
        classes=list(classes),
        target_mean=float(y.mean()) if regression else 0.0,
        target_std=(float(y.std()) or 1.0) if regression else 1.0,
    )


def _start_at_base_rate(model: DomainModel, task_type: str, y: np.ndarray, n_classes: int) -> None:
    """Set the head's bias to the class log-odds, so the first epochs learn signal, not the base rate."""
    if task_type == "binary" and len(y):
        rate = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
        model.head.bias.data.fill_(math.log(rate / (1 - rate)))
    elif task_type == "multiclass" and len(y):
        shares = np.bincount(y.astype(np.int64), minlength=n_classes) / len(y)
        model.head.bias.data.copy_(torch.as_tensor(np.log(np.clip(shares, 1e-4, None)), dtype=torch.float32))


def _loss(config: EncoderConfig, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    outputs = outputs.float()
    if config.task_type == "binary":
        return F.binary_cross_entropy_with_logits(outputs[:, 0], target)
    if config.task_type == "multiclass":
        return F.cross_entropy(outputs, target.long())
    return F.mse_loss(outputs[:, 0], (target - config.target_mean) / config.target_std)


def train_domain_encoder(
    train: Sequences,
    y_train: np.ndarray,
    valid: Sequences,
    y_valid: np.ndarray,
    *,
    task_type: str,
    metric: str,
    classes: list,
    manifest: dict,
    params: TrainParams,
    progress: Progress | None = None,
    device: str = "auto",
    seed: int = 0,
) -> tuple[DomainModel, list[dict[str, float]]]:
    """Fit a domain model on ``train``; keep the weights with the best ``metric`` on ``valid``.

    Targets: 0/1 (binary), class index into ``classes`` (multiclass), float (regression).
    Returns the best model (eval mode, on CPU) and one history entry per epoch.
    """
    progress = progress or (lambda **_: None)
    torch.set_num_threads(params.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = resolve_device(device)

    config = build_config(
        train, task_type=task_type, classes=classes, manifest=manifest, params=params, y_train=y_train
    )
    model = DomainModel(config)
    _start_at_base_rate(model, task_type, np.asarray(y_train), len(classes))
    model = model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    table = EventTable(train, vocab_sizes=config.categorical)
    target = torch.as_tensor(np.asarray(y_train, dtype=np.float32))
    steps_per_epoch = math.ceil(train.n_rows / params.batch_size)
    total_steps = max(steps_per_epoch * params.max_epochs, 1)
    warmup = min(100, total_steps // 10 + 1)

    def lr_factor(step: int) -> float:
        # Short warm-up (AdamW's first steps are noisy), then cosine decay to 10% by the last epoch.
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (
            1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total_steps - warmup, 1)))
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history: list[dict[str, float]] = []
    best_value: float | None = None
    best_state: dict | None = None
    stale = 0
    for epoch in range(1, params.max_epochs + 1):
        model.train()
        plan = plan_batches(table.lengths, batch_size=params.batch_size, rng=rng)
        started, events, loss_sum = time.perf_counter(), 0, 0.0
        report_every = max(len(plan) // 10, 1)
        for i, rows in enumerate(plan):
            batch = table.batch(rows)
            events += int(batch.lengths.sum())
            batch = batch.to(dev)
            with _autocast(dev):
                outputs, _ = model(batch.categorical, batch.dense, batch.lengths)
            loss = _loss(config, outputs, target[rows].to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(rows)
            if (i + 1) % report_every == 0 and i + 1 < len(plan):
                progress(epoch=epoch, max_epochs=params.max_epochs, fraction=(i + 1) / len(plan))
        seconds = time.perf_counter() - started
        outputs_valid, _ = predict(model, valid, device=str(dev))
        value = compute_metric(metric, np.asarray(y_valid), to_scores(task_type, outputs_valid))
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / max(train.n_rows, 1),
                "valid_metric": value,
                "seconds": seconds,
                "events_per_s": events / max(seconds, 1e-9),
            }
        )
        progress(epoch=epoch, max_epochs=params.max_epochs, metric=value, metric_name=metric, fraction=1.0)
        if is_better(metric, value, best_value):
            best_value, stale = value, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale > params.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.cpu().eval(), history


def predict(
    model: DomainModel, seqs: Sequences, *, batch_size: int = PREDICT_BATCH, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs and embeddings for every row, in input order, from length-sorted batches.

    Returns (outputs: (N,) or (N, C) float32, embeddings: (N, hidden) float32).
    """
    config = model.config
    dev = resolve_device(device)
    was_training = model.training
    model.eval()
    table = EventTable(seqs, vocab_sizes=config.categorical)
    outputs = np.zeros((seqs.n_rows, config.n_outputs), np.float32)
    embeddings = np.zeros((seqs.n_rows, config.hidden), np.float32)
    with torch.inference_mode():
        for rows in plan_batches(table.lengths, batch_size=batch_size):
            batch = table.batch(rows).to(dev)
            with _autocast(dev):
                out, emb = model(batch.categorical, batch.dense, batch.lengths)
            outputs[rows] = out.float().cpu().numpy()
            embeddings[rows] = emb.float().cpu().numpy()
    model.train(was_training)
    if config.task_type == "regression":
        outputs = outputs * config.target_std + config.target_mean
    return (outputs if config.task_type == "multiclass" else outputs[:, 0]), embeddings
