"""Training a model (one domain's encoder, or the fusion model over several) with early stopping on the
user's metric, and batch inference.

``predict`` returns raw outputs: logits (binary (N,), multiclass (N, C)) or the regression
prediction in the target's own units (N,); ``to_scores`` turns them into what metrics read.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from anna_models.batching import Batch, EventTable, plan_batches
from anna_models.config import TrainParams
from anna_models.devices import autocast, data_placement, resolve_device, use_threads
from anna_models.encoders import DomainModel, EncoderConfig, ModelConfig
from anna_models.metrics import compute_metric, is_better
from anna_models.sequences import TIME_FEATURES, Sequences
from anna_models.threads import on_one_thread_each

Progress = Callable[..., None]
# Inference batches on CPU: up to PREDICT_BATCH rows and PREDICT_TOKENS_PER_THREAD padded events.
# Sorted by length, short rows then share wide batches (per-batch overhead amortised). With the fused GRU's
# per-step scoring, 24,576 ran 5-10% faster than 16,384 or 32,768 on the demo's card transactions and on
# Poisson(200) lengths (bench/throughput.py's data), and 65,536 or more 15-40% slower. Since scoring runs
# a batch's whole recurrence in one compiled call, 6,144 and 12,288 ran 10-25% slower than 24,576, and
# 98,304 0-10% faster (AMD EPYC, AVX2, 2026-12-08): not enough to move it.
PREDICT_BATCH = 4096
PREDICT_TOKENS_PER_THREAD = 24576
# A GPU runs each time step in parallel across a batch's rows: wider batches, fewer sequential steps.
PREDICT_BATCH_CUDA = 4096


def to_scores(task_type: str, outputs: np.ndarray) -> np.ndarray:
    """Raw outputs → metric inputs: P(class 1), class probabilities, or the prediction itself."""
    if task_type == "binary":
        return 1.0 / (1.0 + np.exp(-np.clip(outputs, -50, 50)))
    if task_type == "multiclass":
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return outputs


def encoder_config(seqs: Sequences, manifest: dict, params: TrainParams) -> EncoderConfig:
    """One domain's encoder shape: vocab sizes from the mart manifest (or the data, if it lacks them)."""
    features = manifest.get("features", {})
    vocab = {}
    for name in sorted(seqs.categorical):
        declared = features.get(name, {}).get("vocab_size")
        vocab[name] = int(declared) if declared else int(seqs.categorical[name].max(initial=1)) + 1
    return EncoderConfig(
        categorical=vocab, n_dense=len(seqs.numeric) + len(TIME_FEATURES), architecture=params.architecture,
        hidden=params.hidden, layers=params.layers, dropout=params.dropout, max_len=params.max_len,
    )


def model_config(seqs: Mapping[str, Sequences], manifests: Mapping[str, dict], params: TrainParams, *,
                 task_type: str, classes: list, y_train: np.ndarray) -> ModelConfig:
    y = np.asarray(y_train, dtype=np.float64)
    regression = task_type == "regression" and len(y) > 0
    return ModelConfig(
        encoders={d: encoder_config(s, manifests.get(d, {}), params) for d, s in seqs.items()},
        task_type=task_type, n_outputs=len(classes) if task_type == "multiclass" else 1, hidden=params.hidden,
        dropout=params.dropout, classes=list(classes), target_mean=float(y.mean()) if regression else 0.0,
        target_std=(float(y.std()) or 1.0) if regression else 1.0,
    )


def _start_at_base_rate(model: DomainModel, y: np.ndarray) -> None:
    """Set the head's bias to the class log-odds, so the first steps learn signal, not the base rate.

    Rare classes get weights in the loss (``anna_models.imbalance``, kept in ``config.class_weights``);
    the bias then starts at the weighted rates, which is where the weighted loss's optimum begins.
    """
    from anna_models.imbalance import class_weights

    config = model.config
    if config.task_type not in ("binary", "multiclass") or not len(y):
        return
    labels = np.asarray(y).astype(np.int64)
    n_classes = config.n_outputs if config.task_type == "multiclass" else 2
    weights = class_weights(labels, config.task_type, n_classes)
    config.class_weights = None if weights is None else weights.tolist()
    shares = np.bincount(labels, minlength=n_classes) / len(labels) * (1.0 if weights is None else weights)
    shares = np.clip(shares / shares.sum(), 1e-4, 1 - 1e-4)
    if config.task_type == "binary":
        model.head.bias.data.fill_(math.log(shares[1] / shares[0]))
    else:
        model.head.bias.data.copy_(torch.as_tensor(np.log(shares), dtype=torch.float32))


def _loss(config: ModelConfig, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    outputs = outputs.float()
    weights = None
    if config.class_weights is not None and config.task_type in ("binary", "multiclass"):
        weights = torch.as_tensor(config.class_weights, dtype=torch.float32, device=outputs.device)
    if config.task_type == "binary":
        row_weight = None if weights is None else weights[target.long()]
        return F.binary_cross_entropy_with_logits(outputs[:, 0], target, weight=row_weight)
    if config.task_type == "multiclass":
        return F.cross_entropy(outputs, target.long(), weight=weights)
    return F.mse_loss(outputs[:, 0], (target - config.target_mean) / config.target_std)


class _Tables:
    """Each domain's EventTable over the same rows; batches are planned on the rows' total length and
    yielded on ``device`` (see ``data_placement``)."""

    def __init__(self, seqs: Mapping[str, Sequences], config: ModelConfig,
                 device: torch.device = torch.device("cpu")) -> None:
        vocab = {d: e.categorical for d, e in config.encoders.items()}
        self.tables = {d: EventTable(seqs[d], vocab_sizes=vocab[d]) for d in config.domains}
        self.lengths: np.ndarray = np.sum([t.lengths for t in self.tables.values()], axis=0)  # (N,) events
        self.device = device
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        self.placement = data_placement(device, sum(t.nbytes for t in self.tables.values()), free)
        if self.placement == "device":
            for table in self.tables.values():
                table.to(device)

    def batches(self, plan: list[np.ndarray]) -> Iterator[tuple[np.ndarray, dict[str, Batch]]]:
        for rows in plan:
            batches = {d: t.batch(rows) for d, t in self.tables.items()}
            if self.placement == "pinned":
                batches = {d: b.pin_memory() for d, b in batches.items()}
            yield rows, {d: b.to(self.device) for d, b in batches.items()}


def _as_domains(seqs: Sequences | Mapping[str, Sequences], config: ModelConfig) -> Mapping[str, Sequences]:
    if isinstance(seqs, Sequences):
        if len(config.domains) != 1:
            raise ValueError(f"this model reads domains {config.domains}; pass a dict of Sequences")
        return {config.domains[0]: seqs}
    return seqs


def train_domain_encoder(train: Sequences, y_train: np.ndarray, valid: Sequences, y_valid: np.ndarray, *,
                         task_type: str, metric: str, classes: list, manifest: dict, params: TrainParams,
                         progress: Progress | None = None, device: str = "auto", seed: int = 0
                         ) -> tuple[DomainModel, list[dict[str, float]]]:
    """Fit one domain's model on ``train``; keep the weights with the best ``metric`` on ``valid``.

    Targets: 0/1 (binary), class index into ``classes`` (multiclass), float (regression).
    Returns the best model (eval mode, on CPU) and one history entry per epoch.
    """
    domain = manifest.get("name", "events")
    return train_model({domain: train}, y_train, {domain: valid}, y_valid, task_type=task_type, metric=metric,
                       classes=classes, manifests={domain: manifest}, params=params, progress=progress,
                       device=device, seed=seed)


def train_model(train: Mapping[str, Sequences], y_train: np.ndarray, valid: Mapping[str, Sequences],
                y_valid: np.ndarray, *, task_type: str, metric: str, classes: list,
                manifests: Mapping[str, dict], params: TrainParams, progress: Progress | None = None,
                device: str = "auto", seed: int = 0, init: Mapping[str, torch.Tensor] | None = None,
                should_stop: Callable[[list[dict[str, float]]], bool] | None = None,
                ) -> tuple[DomainModel, list[dict[str, float]]]:
    """Fit a model over the given domains (the same rows in each); see ``train_domain_encoder``.

    ``init``: a partial state dict (e.g. a pretrained encoder's ``events.*`` and ``sequences.*``
    weights) loaded over the fresh model before training; its keys must exist in the model. With
    ``params.freeze_encoder`` the event and sequence encoder weights it loaded then stay as loaded (in
    the fusion model, a domain without pretrained weights trains its encoders all the same).
    ``should_stop(history)``: asked after every epoch; True ends training there (a search prunes a
    trial this way). The best epoch's weights are returned either way.
    """
    progress = progress or (lambda **_: None)
    use_threads(params.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = resolve_device(device)
    config = model_config(train, manifests, params, task_type=task_type, classes=classes, y_train=y_train)
    model = DomainModel(config)
    _start_at_base_rate(model, np.asarray(y_train))
    if init is not None:
        missing = sorted(set(init) - set(model.state_dict()))
        if missing:
            raise ValueError(f"initial weights {missing[:3]} do not fit this model's shape")
        model.load_state_dict(dict(init), strict=False)
        if params.freeze_encoder:
            for name, weight in model.named_parameters():
                if name in init and name.startswith(("events.", "sequences.")):
                    weight.requires_grad_(False)  # AdamW skips weights without gradients
    model = model.to(dev)
    # fused: one kernel for the whole update on CUDA instead of a few per parameter group.
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay,
                                  fused=dev.type == "cuda")
    tables = _Tables(train, config, dev)
    target = torch.as_tensor(np.asarray(y_train, dtype=np.float32)).to(dev)
    total_steps = max(math.ceil(len(target) / params.batch_size) * params.max_epochs, 1)
    warmup = min(100, total_steps // 10 + 1)

    def lr_factor(step: int) -> float:
        # Short warm-up (AdamW's first steps are noisy), then cosine decay to 10% by the last epoch.
        if step < warmup:
            return (step + 1) / warmup
        done = min(1.0, (step - warmup) / max(total_steps - warmup, 1))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history: list[dict[str, float]] = []
    best_value: float | None = None
    best_state: dict | None = None
    stale = 0
    for epoch in range(1, params.max_epochs + 1):
        model.train()
        plan = plan_batches(tables.lengths, batch_size=params.batch_size, rng=rng)
        started, events, data_seconds = time.perf_counter(), 0, 0.0
        # Summed where the loss lives: reading it back every step would make the host wait for the GPU.
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        report_every = max(len(plan) // 10, 1)
        source = tables.batches(plan)
        for i in range(len(plan)):
            # The data path's own time, to show it never starves the model (history's "model_share").
            fetched = time.perf_counter()
            rows, batches = next(source)
            data_seconds += time.perf_counter() - fetched
            events += int(tables.lengths[rows].sum())
            with autocast(dev):
                outputs, _ = model(batches)
            loss = _loss(config, outputs, target[torch.from_numpy(rows).to(dev, non_blocking=True)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double() * len(rows)
            if (i + 1) % report_every == 0 and i + 1 < len(plan):
                progress(epoch=epoch, max_epochs=params.max_epochs, unit="epoch",
                         fraction=(i + 1) / len(plan))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # the epoch's kernels are queued, not done, until here
        seconds = time.perf_counter() - started
        outputs_valid, _ = predict(model, valid, device=str(dev))
        value = compute_metric(metric, np.asarray(y_valid), to_scores(task_type, outputs_valid))
        history.append({"epoch": epoch, "train_loss": float(loss_sum) / max(len(target), 1),
                        "valid_metric": value, "seconds": seconds,
                        "events_per_s": events / max(seconds, 1e-9),
                        "model_share": 1.0 - data_seconds / max(seconds, 1e-9)})
        progress(epoch=epoch, max_epochs=params.max_epochs, unit="epoch", metric=value, metric_name=metric,
                 fraction=1.0)
        if is_better(metric, value, best_value):
            best_value, stale = value, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale > params.patience:
                break
        if should_stop is not None and should_stop(history):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.cpu().eval(), history


def predict(model: DomainModel, seqs: Sequences | Mapping[str, Sequences], *, batch_size: int | None = None,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs and embeddings for every row, in input order, from length-sorted batches.

    ``seqs``: a domain model's Sequences, or {domain: Sequences} (same rows) for any model.
    The model runs on ``device`` and is handed back where it was. ``batch_size`` defaults to
    ``PREDICT_BATCH`` (``PREDICT_BATCH_CUDA`` on a GPU); on CPU batches also hold at most
    ``PREDICT_TOKENS_PER_THREAD`` padded events, and with several torch threads each thread runs whole
    batches. Outputs do not depend on any of this beyond rounding.
    Returns (outputs: (N,) or (N, C) float32, embeddings: (N, hidden) float32).
    """
    config = model.config
    dev = resolve_device(device)
    batch_size = batch_size or (PREDICT_BATCH_CUDA if dev.type == "cuda" else PREDICT_BATCH)
    home = next(model.parameters()).device
    was_training = model.training
    model.to(dev).eval()
    tables = _Tables(_as_domains(seqs, config), config, dev)
    n = len(tables.lengths)
    # Filled on the device and read back once: a read-back per batch would stall the GPU every batch.
    outputs_t = torch.zeros((n, config.n_outputs), dtype=torch.float32, device=dev)
    embeddings_t = torch.zeros((n, config.hidden), dtype=torch.float32, device=dev)
    tokens = None if dev.type == "cuda" else PREDICT_TOKENS_PER_THREAD
    plan = plan_batches(tables.lengths, batch_size=batch_size, max_tokens=tokens)

    def run(rows: np.ndarray, batches: dict[str, Batch]) -> None:
        with torch.inference_mode(), autocast(dev):
            out, emb = model(batches)
            index = torch.from_numpy(rows).to(dev, non_blocking=True)
            outputs_t[index] = out.float()
            embeddings_t[index] = emb.float()

    try:
        threads = torch.get_num_threads()
        if dev.type == "cpu" and threads > 1 and len(plan) > 1:
            # Longest batches first, so that no thread is left with one at the end.
            on_one_thread_each(lambda rows: run(*next(tables.batches([rows]))), plan[::-1], threads)
        else:
            for rows, batches in tables.batches(plan):
                run(rows, batches)
        outputs, embeddings = outputs_t.cpu().numpy(), embeddings_t.cpu().numpy()
    finally:
        model.to(home).train(was_training)
    if config.task_type == "regression":
        outputs = outputs * config.target_std + config.target_mean
    return (outputs if config.task_type == "multiclass" else outputs[:, 0]), embeddings

