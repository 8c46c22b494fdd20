"""Encoder probes (the paper's Table 5, X-Ares style): how good are frozen embeddings?

A probe freezes an audio encoder, embeds every clip of a labelled manifest, and trains a
small MLP (one hidden layer) on the embeddings of a training part; the task's metric on
the held-out part is the encoder's score. It is how the encoder of the ``align`` stage is
judged before stages 2-3, and how two encoders are compared: the split depends only on the
labels, ``seed`` and ``test_fraction`` (never on the encoder), and the MLP starts from the
same seeded weights, so :func:`run_probe` on two encoders with the same rows and seed
scores them on exactly the same clips.

Kinds and metrics (higher is better for all three):

* ``classification`` (one string label per clip): accuracy; softmax cross-entropy.
* ``multilabel`` (a list of strings per clip): mAP, the macro average over classes of
  sklearn's ``average_precision_score``, over the classes with at least one positive
  test clip (AP is undefined without one); sigmoid binary cross-entropy.
* ``regression`` (a number per clip): R², the coefficient of determination (as sklearn's
  ``r2_score``), with MAE and Pearson's r as details. R² is chosen because it is
  scale-free (comparable across tasks and label units), 0 means "no better than
  predicting the mean" and 1 is perfect, and unlike Pearson's r it also penalises a
  probe whose predictions are correlated but offset or mis-scaled. Targets are
  standardised with the training mean and deviation for the MLP.

Pooling: ``mean`` averages the encoder's valid frames (``samples // 640`` per clip, 25 per
second) into one embedding per clip. ``frame`` trains the MLP on every valid frame, each
with its clip's label, and scores a clip by averaging its frames' predictions
(probabilities for classification and multilabel, values for regression): a simple
frame-level probe for clip labels, not a frame-labelled task (e.g. event onsets). Frame
embeddings are held in memory (4 bytes x 25 frames/s x embed_dim per second of audio).

Details that make results reproducible: embeddings are standardised with the training
part's mean and deviation; the MLP trains for a fixed number of epochs on the CPU in fp32
(AdamW, mini-batches in a seeded order), no early stopping; the last epoch is scored.
Clips shorter than 0.2 s are zero-padded to 3200 samples, as the processor does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from midashenglm.errors import UserError
from midashenglm.modeling.geometry import MIN_AUDIO_SAMPLES  # the processor's shortest clip (0.2 s)

KINDS = ("classification", "multilabel", "regression")
POOLINGS = ("mean", "frame")
METRICS = {"classification": "accuracy", "multilabel": "mAP", "regression": "R2"}
MULTILABEL_SEPARATOR = ";"  # between the labels of a clip in a CSV cell (or a JSON string)
LOAD_CHUNK = 256  # clips decoded and held in memory at a time
SPLITS = ("train", "test")

Label = str | list[str] | float


@dataclass(frozen=True)
class ProbeRow:
    """One labelled clip.

    ``audio``: a path, or a mono float32 waveform at 16 kHz (a numpy array).
    ``label``: a string (classification), a list of strings (multilabel) or a number
    (regression); :func:`run_probe` converts what it can (``"a;b"`` to ``["a", "b"]``,
    ``"3.5"`` to 3.5) and names the row (``source``) when it cannot. ``split``: "train" or
    "test" to fix the split (all rows or none), None for a seeded random split.
    """

    audio: str | os.PathLike | np.ndarray
    label: Any
    source: str = ""
    split: str | None = None


@dataclass
class ProbeResult:
    """What a probe measured. ``score`` is the ``metric`` on the ``test_clips`` held out;
    ``baseline`` the same metric for a probe that ignores the audio (the majority class,
    each class's positive rate, the training mean)."""

    task: str
    kind: str
    metric: str
    score: float
    baseline: float
    pooling: str
    seed: int
    train_clips: int
    test_clips: int
    classes: list[str]
    embed_dim: int
    train_loss: float
    skipped: list[str] = field(default_factory=list)  # one "source: why" per unreadable clip
    test_rows: list[int] = field(default_factory=list)  # indices (into the rows) of the clips scored
    details: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_skipped"] = len(self.skipped)
        data["num_classes"] = len(self.classes)
        return data


# --------------------------------------------------------------------------- the encoder
def load_encoder(spec: str | os.PathLike, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> Any:
    """The frozen :class:`~midashenglm.modeling.encoder.DashengEncoder` to probe, in eval mode.

    ``spec`` is a MiDashengLM checkpoint folder (or a Hub id in the local cache): only its
    ``audio_encoder.*`` tensors are read (the same weights and BatchNorm statistics as
    ``MiDashengLM.from_pretrained(spec).audio_encoder``, without loading the decoder); or an
    original Dasheng ``.pt`` file (:func:`midashenglm.checkpoint.load_dasheng_checkpoint`).
    Raises :class:`~midashenglm.modeling.weights.CheckpointError` naming what does not fit.
    """
    from midashenglm.checkpoint import load_dasheng_checkpoint
    from midashenglm.modeling.encoder import DashengEncoder
    from midashenglm.modeling.weights import (
        load_config,
        load_state,
        resolve_checkpoint,
        weight_files,
    )

    path = Path(spec).expanduser()
    if path.is_file():
        encoder = load_dasheng_checkpoint(path)
    else:
        folder = resolve_checkpoint(spec)
        config = load_config(folder)
        encoder = DashengEncoder(config.audio_encoder_config)  # load_state overwrites every tensor
        load_state(encoder, _encoder_tensors(weight_files(folder)), source=str(folder),
                   prefix="audio_encoder.")
    encoder = encoder.to(device=device, dtype=dtype).eval()
    encoder.requires_grad_(False)
    return encoder


def _encoder_tensors(files: list[Path]):
    """(key, tensor) of the ``audio_encoder.*`` keys only: the decoder's shards are never read."""
    from midashenglm.modeling.weights import iter_tensors, normalize_key, open_safetensors

    def wanted(key: str) -> bool:
        name = normalize_key(key)
        return name is not None and name.startswith("audio_encoder.")

    for file in files:
        if file.suffix == ".safetensors":
            with open_safetensors(file) as shard:
                for key in shard.keys():  # noqa: SIM118 - safe_open is not a dict
                    if wanted(key):
                        yield key, shard.get_tensor(key)
        else:
            yield from ((k, t) for k, t in iter_tensors([file]) if wanted(k))


# --------------------------------------------------------------------------- the manifest
def read_probe_manifest(path: str | os.PathLike, *, split_column: str | None = None) -> list[ProbeRow]:
    """Rows of a JSONL or CSV manifest with columns ``audio`` and ``label``.

    Relative audio paths resolve against the manifest's folder. ``split_column`` names a
    column holding "train" or "test" for every row. A row without audio or label (or with
    a bad split value) is a :class:`~midashenglm.errors.UserError` naming the file and row;
    labels are checked by :func:`run_probe`, which knows the kind.
    """
    from midashenglm.inference.manifest import read_manifest

    path = Path(path)
    rows = []
    for row in read_manifest(path):
        where = f"{path}, row {row.index + 1}"
        if row.error:
            raise UserError(f"{path}: {row.error}")
        if "label" not in row.data or row.data["label"] in ("", None):
            raise UserError(f"{where}: no 'label'")
        split = None
        if split_column is not None:
            value = row.data.get(split_column)
            split = str(value).strip().lower() if value is not None else ""
            if split not in SPLITS:
                raise UserError(f"{where}: column '{split_column}' must be train or test, got {value!r}")
        rows.append(ProbeRow(audio=row.audio_path, label=row.data["label"], source=where, split=split))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _as_rows(rows: Sequence[ProbeRow | Mapping[str, Any]]) -> list[ProbeRow]:
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, ProbeRow):
            out.append(row if row.source else ProbeRow(row.audio, row.label, f"row {i + 1}", row.split))
        else:
            out.append(ProbeRow(row["audio"], row["label"], row.get("source") or f"row {i + 1}",
                                row.get("split")))
    return out


def infer_kind(labels: Sequence[Any]) -> str:
    """multilabel when every label is a list, regression when every one is a number,
    classification otherwise (CSV cells are strings: pass the kind for the others)."""
    if labels and all(isinstance(v, (list, tuple)) for v in labels):
        return "multilabel"
    if labels and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        return "regression"
    if any(isinstance(v, (list, tuple)) for v in labels):
        raise UserError("some labels are lists and some are not: pass the kind (--kind)")
    return "classification"


def _normalise_label(value: Any, kind: str, source: str) -> Label:
    if kind == "classification":
        if isinstance(value, (list, tuple, dict)) or value is None:
            raise UserError(f"{source}: 'label' must be one class name for classification, got {value!r}")
        return str(value).strip()
    if kind == "multilabel":
        if isinstance(value, str):
            value = [v for v in value.split(MULTILABEL_SEPARATOR)]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: 'label' must be a list of class names (or 'a;b') for "
                            f"multilabel, got {value!r}")
        names = sorted({str(v).strip() for v in value} - {""})
        return names
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: 'label' must be a number for regression, got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{source}: 'label' must be a finite number, got {value!r}")
    return number


# --------------------------------------------------------------------------- the split
def split_indices(labels: Sequence[Label], kind: str, *, seed: int = 0,
                  test_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """(train, test) row indices: a seeded random split, stratified by class for
    classification (each class with 2+ clips puts at least one in each part).

    Depends only on the labels, the kind, ``seed`` and ``test_fraction``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"the test fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    n = len(labels)
    test: list[int] = []
    if kind == "classification":
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(str(label), []).append(i)
        for name in sorted(groups):
            members = rng.permutation(np.asarray(groups[name]))
            take = int(math.floor(len(members) * test_fraction + 0.5))
            if len(members) >= 2:
                take = min(max(take, 1), len(members) - 1)
            else:
                take = 0
            test.extend(int(i) for i in members[:take])
    else:
        order = rng.permutation(n)
        take = min(max(int(math.floor(n * test_fraction + 0.5)), 1), n - 1) if n >= 2 else 0
        test = [int(i) for i in order[:take]]
    held = set(test)
    return [i for i in range(n) if i not in held], sorted(held)


# --------------------------------------------------------------------------- embeddings
@torch.no_grad()
def embed_waves(encoder: Any, waves: Sequence[np.ndarray], *, pooling: str = "mean",
                batch_seconds: float = 300.0, sample_rate: int = 16000,
                on_batch: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """Embeddings of clips with a frozen encoder, float32 on the CPU.

    ``waves``: mono float32 waveforms at 16 kHz. Returns, per clip, a (D,) tensor (mean
    over its valid frames) for ``pooling="mean"`` or (frames, D) for ``"frame"``. Clips
    are sorted by length and batched under ``batch_seconds`` of padded audio (the encoder
    gives every clip in a padded batch the same result as alone); ``on_batch(n)`` is
    called after each batch of ``n`` clips.
    """
    if pooling not in POOLINGS:
        raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    device = next(encoder.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(waves)
    order = sorted(range(len(waves)), key=lambda i: -len(waves[i]))
    start = 0
    while start < len(order):
        longest = max(len(waves[order[start]]), MIN_AUDIO_SAMPLES)
        per_batch = max(1, int(batch_seconds * sample_rate // longest))
        chunk = order[start : start + per_batch]
        start += len(chunk)
        batch = torch.zeros(len(chunk), longest)
        lengths = torch.empty(len(chunk), dtype=torch.long)
        for row, i in enumerate(chunk):
            wave = torch.from_numpy(np.asarray(waves[i], dtype=np.float32))
            batch[row, : len(wave)] = wave
            lengths[row] = max(len(wave), MIN_AUDIO_SAMPLES)  # short clips: zero-padded to 0.2 s
        features, mask = encoder(batch.to(device), lengths.to(device))
        features, mask = features.float().cpu(), mask.cpu()
        for row, i in enumerate(chunk):
            frames = features[row, mask[row]]
            out[i] = frames.mean(dim=0) if pooling == "mean" else frames.clone()
        if on_batch is not None:
            on_batch(len(chunk))
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- the probe
def run_probe(
    encoder: Any,
    rows: Sequence[ProbeRow | Mapping[str, Any]],
    task: str = "probe",
    kind: str | None = None,
    *,
    pooling: str = "mean",
    epochs: int = 100,
    lr: float = 1e-3,
    hidden: int = 256,
    batch_size: int = 64,
    weight_decay: float = 1e-2,
    seed: int = 0,
    test_fraction: float = 0.2,
    batch_seconds: float = 300.0,
    progress: Callable[[int], None] | None = None,
) -> ProbeResult:
    """Probe a frozen ``encoder`` (a DashengEncoder on any device) on labelled ``rows``.

    ``rows``: :class:`ProbeRow` or mappings with ``audio`` (path or 16 kHz waveform),
    ``label`` and optionally ``split`` and ``source``. ``kind``: "classification",
    "multilabel", "regression", or None to infer it from the labels (:func:`infer_kind`).
    The split is fixed by the rows' ``split`` values, else by ``seed`` and
    ``test_fraction`` (:func:`split_indices`); an unreadable clip is left out (listed in
    ``skipped``) after the split, so two encoders probed with the same arguments are
    scored on the same clips. ``progress(n)`` is called as ``n`` more clips are embedded
    or skipped (``len(rows)`` in all).

    Raises :class:`~midashenglm.errors.UserError` for labels that do not fit the kind, a
    single class, or a part with no readable clip.
    """
    from midashenglm.audio import AudioError, load_audio

    if kind is not None and kind not in KINDS:
        raise UserError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if pooling not in POOLINGS:
        raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if epochs < 1 or hidden < 1 or batch_size < 1 or not lr > 0:
        raise UserError("epochs, hidden, batch size and learning rate must be positive")
    items = _as_rows(rows)
    if len(items) < 2:
        raise UserError(f"a probe needs at least 2 labelled clips, got {len(items)}")
    kind = kind or infer_kind([r.label for r in items])
    labels = [_normalise_label(r.label, kind, r.source) for r in items]
    classes = _classes(labels, kind)
    if kind != "regression" and len(classes) < 2:
        raise UserError(f"task {task!r}: the labels name {len(classes)} class(es); a probe needs 2 or more")

    fixed = [r.split for r in items]
    if any(s is not None for s in fixed):
        if any(s not in SPLITS for s in fixed):
            bad = next(r for r in items if r.split not in SPLITS)
            raise UserError(f"{bad.source}: split must be train or test for every row, got {bad.split!r}")
        train, test = [i for i, s in enumerate(fixed) if s == "train"], [i for i, s in enumerate(fixed) if s == "test"]
    else:
        train, test = split_indices(labels, kind, seed=seed, test_fraction=test_fraction)

    # Load clips a chunk at a time (bounded memory; a bad clip is skipped, not fatal), and
    # embed each chunk in length-sorted batches.
    skipped: list[str] = []
    embeddings: dict[int, torch.Tensor] = {}
    was_training = encoder.training
    encoder.eval()
    try:
        for begin in range(0, len(items), LOAD_CHUNK):
            waves: dict[int, np.ndarray] = {}
            for i in range(begin, min(begin + LOAD_CHUNK, len(items))):
                try:
                    waves[i] = load_audio(items[i].audio)
                except (AudioError, OSError) as err:
                    skipped.append(f"{items[i].source}: {err}")
                    if progress is not None:
                        progress(1)
            keys = sorted(waves)
            pooled = embed_waves(encoder, [waves[i] for i in keys], pooling=pooling,
                                 batch_seconds=batch_seconds, on_batch=progress)
            embeddings.update(zip(keys, pooled, strict=True))
    finally:
        encoder.train(was_training)

    train = [i for i in train if i in embeddings]
    test = [i for i in test if i in embeddings]
    if not train or not test:
        raise UserError(f"task {task!r}: no readable clip in the {'training' if not train else 'test'} part "
                        f"({len(skipped)} clip(s) skipped)")
    x_train, y_train, _, train_truth = _stack(embeddings, labels, train, kind, classes)
    x_test, _, owner_test, truth = _stack(embeddings, labels, test, kind, classes)

    mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    target_mean = target_std = None
    if kind == "regression":
        target_mean, target_std = y_train.mean(), y_train.std(unbiased=False).clamp_min(1e-6)
        y_train = (y_train - target_mean) / target_std

    out_dim = 1 if kind == "regression" else len(classes)
    mlp, train_loss = _fit(x_train, y_train, kind, out_dim, hidden=hidden, epochs=epochs, lr=lr,
                           batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    with torch.no_grad():
        outputs = mlp(x_test)
    if kind == "classification":
        scores = outputs.softmax(-1)
    elif kind == "multilabel":
        scores = outputs.sigmoid()
    else:
        scores = outputs[:, 0] * target_std + target_mean
    # Clip predictions: the mean over each clip's frames (one frame per clip when mean-pooled).
    clip_scores = _per_clip(scores, owner_test, len(test))
    score, baseline, details = _score(kind, truth, clip_scores, train_truth)
    return ProbeResult(
        task=task, kind=kind, metric=METRICS[kind], score=score, baseline=baseline, pooling=pooling,
        seed=seed, train_clips=len(train), test_clips=len(test), classes=classes,
        embed_dim=int(x_train.shape[1]), train_loss=train_loss, skipped=skipped, test_rows=test,
        details=details,
        settings={"epochs": epochs, "lr": lr, "hidden": hidden, "batch_size": batch_size,
                  "weight_decay": weight_decay, "split": "fixed" if fixed[0] is not None else "random",
                  "test_fraction": None if fixed[0] is not None else test_fraction},
    )


def _classes(labels: Sequence[Label], kind: str) -> list[str]:
    if kind == "classification":
        return sorted({str(v) for v in labels})
    if kind == "multilabel":
        return sorted({name for v in labels for name in v})  # type: ignore[union-attr]
    return []


def _stack(embeddings: dict[int, torch.Tensor], labels: Sequence[Label], indices: list[int], kind: str,
           classes: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Features (rows, D), the target of each row, the clip (0..len(indices)-1) of each row,
    and the targets per clip (numpy): a clip gives one row, or one per frame."""
    index = {name: k for k, name in enumerate(classes)}
    feats, targets, owners, clip_targets = [], [], [], []
    for clip, i in enumerate(indices):
        emb = embeddings[i]
        emb = emb[None] if emb.ndim == 1 else emb
        if kind == "classification":
            target = torch.tensor(index[str(labels[i])])
        elif kind == "multilabel":
            target = torch.zeros(len(classes))
            target[[index[name] for name in labels[i]]] = 1.0  # type: ignore[union-attr]
        else:
            target = torch.tensor(float(labels[i]))  # type: ignore[arg-type]
        feats.append(emb)
        owners.append(torch.full((emb.shape[0],), clip, dtype=torch.long))
        targets.append(target.expand(emb.shape[0], *target.shape))
        clip_targets.append(target)
    truth = torch.stack(clip_targets).double().numpy()
    return torch.cat(feats).float(), torch.cat(targets), torch.cat(owners), truth


def _fit(x: torch.Tensor, y: torch.Tensor, kind: str, out_dim: int, *, hidden: int, epochs: int,
         lr: float, batch_size: int, weight_decay: float, seed: int) -> tuple[nn.Module, float]:
    """Train the MLP on the CPU in fp32; returns it (in eval mode) and the last epoch's loss."""
    if kind == "classification":
        loss_fn: nn.Module = nn.CrossEntropyLoss()
    elif kind == "multilabel":
        loss_fn = nn.BCEWithLogitsLoss()
    else:
        loss_fn = nn.MSELoss()
        y = y[:, None]
    # Seeded without touching the caller's global RNG: same seed, same weights and order.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
    last = float("nan")
    mlp.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for begin in range(0, x.shape[0], batch_size):
            idx = order[begin : begin + batch_size]
            loss = loss_fn(mlp(x[idx]), y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        last = total / x.shape[0]
    return mlp.eval(), last


def _per_clip(values: torch.Tensor, owners: torch.Tensor, clips: int) -> np.ndarray:
    sums = torch.zeros(clips, *values.shape[1:], dtype=torch.float64)
    sums.index_add_(0, owners, values.double())
    counts = torch.bincount(owners, minlength=clips).double()
    return (sums / counts.view(-1, *([1] * (values.ndim - 1)))).numpy()


def _score(kind: str, truth: np.ndarray, scores: np.ndarray, train_truth: np.ndarray
           ) -> tuple[float, float, dict[str, float]]:
    """(metric, baseline, details) on the test clips."""
    if kind == "classification":
        predicted = scores.argmax(-1)
        majority = np.bincount(train_truth.astype(int), minlength=scores.shape[1]).argmax()
        return float((predicted == truth).mean()), float((truth == majority).mean()), {}
    if kind == "multilabel":
        from sklearn.metrics import average_precision_score  # imported here: 2 s, multilabel only

        scored = truth.sum(0) > 0  # AP needs a positive clip
        if not scored.any():
            raise UserError("no test clip has any label: the multilabel test part is empty of positives")
        value = average_precision_score(truth[:, scored], scores[:, scored], average="macro")
        # A constant score ranks nothing: its AP is each class's positive rate.
        return float(value), float(truth[:, scored].mean(0).mean()), {"scored_classes": float(scored.sum())}
    mae = float(np.abs(scores - truth).mean())
    pearson = float(np.corrcoef(scores, truth)[0, 1]) if scores.std() > 0 and truth.std() > 0 else float("nan")
    return _r2(truth, scores), _r2(truth, np.full_like(truth, train_truth.mean())), {"mae": mae, "pearson": pearson}


def _r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The coefficient of determination, as sklearn's ``r2_score`` (nan for a constant truth)."""
    total = float(np.square(truth - truth.mean()).sum())
    if total == 0.0:
        return float("nan")
    return 1.0 - float(np.square(truth - predicted).sum()) / total
