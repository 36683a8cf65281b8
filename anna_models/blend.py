"""The blender: a small linear meta-model over the domain encoders' outputs.

It is fit on the ``valid`` rows only — rows no encoder trained on — so it learns how far to
trust each domain out of sample. Inputs per domain: its raw output (logit(s) or regression
prediction; zeroed when the client has no events there) and a "domain present" flag, so a
client missing a domain still gets a sensible score. Saved as plain JSON (no pickles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CS = np.logspace(-3, 2, 11)
ALPHAS = np.logspace(-3, 3, 13)


@dataclass
class Blender:
    """Linear blend of domain outputs; ``predict`` gives P(1) (N,), class probabilities (N, C) or values."""

    task_type: str
    domains: list[str]
    n_classes: int = 2
    mean: list[float] = field(default_factory=list)  # feature standardisation, fit rows
    scale: list[float] = field(default_factory=list)
    coef: list[list[float]] = field(default_factory=list)  # (K, F): K = 1 (binary, regression) or C
    intercept: list[float] = field(default_factory=list)
    chosen: float = 0.0  # the regularisation the inner CV picked (C or alpha)

    def features(self, outputs: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
        """(N, F): per domain, its outputs (1 or C columns) masked by presence, then the presence flag."""
        columns = []
        for domain in self.domains:
            flag = np.asarray(present[domain], dtype=np.float64)
            out = np.asarray(outputs[domain], dtype=np.float64).reshape(len(flag), -1)
            columns.append(out * flag[:, None])
            columns.append(flag[:, None])
        return np.concatenate(columns, axis=1)

    def fit(
        self, outputs: dict[str, np.ndarray], present: dict[str, np.ndarray], y: np.ndarray, *, seed: int = 0
    ) -> Blender:
        """Fit on the given rows (the valid part); C or alpha chosen by 5-fold inner cross-validation."""
        from sklearn.linear_model import LogisticRegressionCV, RidgeCV
        from sklearn.model_selection import KFold, StratifiedKFold

        x = self.features(outputs, present)
        mean, scale = x.mean(0), x.std(0)
        scale[scale < 1e-9] = 1.0  # a flag that never varies carries no information; keep it finite
        self.mean, self.scale = mean.tolist(), scale.tolist()
        xs = (x - mean) / scale
        if self.task_type == "regression":
            folds = KFold(min(5, len(y)), shuffle=True, random_state=seed)
            model = RidgeCV(alphas=ALPHAS, cv=folds).fit(xs, y)
            self.coef, self.intercept = [np.ravel(model.coef_).tolist()], [float(model.intercept_)]
            self.chosen = float(model.alpha_)
            return self
        y = np.asarray(y, dtype=np.int64)
        counts = np.bincount(y)
        smallest = int(counts[counts > 0].min()) if (counts > 0).sum() > 1 else 0
        if smallest < 2:
            # Not enough rows of some class to cross-validate: fall back to a flat prior at the class rates.
            rates = np.bincount(y, minlength=self.n_classes) / max(len(y), 1)
            logits = np.log(np.clip(rates, 1e-6, None))
            k = 1 if self.task_type == "binary" else self.n_classes
            self.coef = np.zeros((k, x.shape[1])).tolist()
            self.intercept = [float(logits[1] - logits[0])] if k == 1 else logits.tolist()
            return self
        folds = StratifiedKFold(min(5, smallest), shuffle=True, random_state=seed)
        model = LogisticRegressionCV(
            Cs=CS, cv=folds, scoring="neg_log_loss", max_iter=2000, l1_ratios=(0.0,),
            use_legacy_attributes=False,
        ).fit(xs, y)
        coef, intercept = np.atleast_2d(model.coef_), np.ravel(model.intercept_)
        if self.task_type == "multiclass" and coef.shape[0] == 1:
            # sklearn fits two classes with one logit; as a softmax that is logits (0, z).
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        if self.task_type == "multiclass" and len(model.classes_) < self.n_classes:
            # Classes never seen in the fit rows get a very low logit rather than an index error.
            full_coef = np.zeros((self.n_classes, x.shape[1]))
            full_intercept = np.full(self.n_classes, -20.0)
            full_coef[model.classes_], full_intercept[model.classes_] = coef, intercept
            coef, intercept = full_coef, full_intercept
        self.coef, self.intercept = coef.tolist(), intercept.tolist()
        self.chosen = float(np.ravel(model.C_)[0])
        return self

    def decision(self, outputs: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
        """(N, K) linear outputs before the link function."""
        xs = (self.features(outputs, present) - np.asarray(self.mean)) / np.asarray(self.scale)
        return xs @ np.asarray(self.coef).T + np.asarray(self.intercept)

    def predict(self, outputs: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
        z = self.decision(outputs, present)
        if self.task_type == "binary":
            return 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -50, 50)))
        if self.task_type == "multiclass":
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)
        return z[:, 0]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, path: Path) -> Blender:
        return cls(**json.loads(Path(path).read_text()))
