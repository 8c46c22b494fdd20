"""How many people speak, and when (Resemblyzer d-vectors, agglomerative clustering).

Embeddings: Resemblyzer's speaker encoder (GE2E d-vectors, 256-d, L2-normed; weights shipped
in the package, Apache-2.0; it needs librosa and ``webrtcvad`` but not torchaudio) over
``WINDOW_S`` (1.5 s) windows every ``HOP_S`` (0.75 s) inside each VAD speech segment; a
segment shorter than a window but at least ``MIN_WINDOW_S`` long is one shorter window, and
shorter bits of speech are not embedded (their turn goes to the nearest embedded window's
speaker). The speech is brought to Resemblyzer's -30 dBFS first (gain only, like its
``preprocess_wav``): its mel input is not logarithmic, so level matters.

Clustering: average-linkage agglomerative clustering on cosine distance, cut at cosine
``threshold`` (0.70 by default). Why 0.70: Resemblyzer puts whole utterances of one voice at
cosine .85-.91 and voices of the other gender at .56-.71 (OFFLINE-RESOURCES.md); 1.5 s windows
are noisier. Measured on espeak-ng voices (mean window cosine between two sentences): one voice
.71-.88 (typically .73-.84), male vs female .51-.69 (typically .55-.63), two male or two
female variants of espeak's one synthesiser .66-.80. Average linkage compares such means, so
0.70 splits the genders and keeps one voice together; two voices of the same gender and
accent may be closer and then count as one speaker (the count is a lower bound). A cluster of
a single window, when the clip has at least ``MIN_WINDOWS_FOR_SINGLETONS`` windows, is an
outlier (a cough, a laugh, a window across a speaker change) and joins the nearest cluster.

Turns: each window owns the time from halfway to its neighbours (within its segment);
consecutive pieces of one speaker separated by at most ``MERGE_GAP_S`` form one turn. Speakers
are numbered 0, 1, ... in order of first appearance.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from midashenglm.curation.experts.base import (
    SAMPLE_RATE,
    Availability,
    Expert,
    need_modules,
    need_resource,
    rounded,
)
from midashenglm.curation.experts.vad import Reloadable, speech_audio, speech_segments

WINDOW_S = 1.5
HOP_S = 0.75
MIN_WINDOW_S = 0.5
DEFAULT_THRESHOLD = 0.70
MIN_WINDOWS_FOR_SINGLETONS = 4
MERGE_GAP_S = 1.0
TARGET_DBFS = -30.0  # Resemblyzer's audio_norm_target_dBFS


def windows(segs: list[tuple[float, float]]) -> list[tuple[int, float, float]]:
    """``(segment index, start_s, end_s)`` of the embedding windows inside speech segments."""
    out = []
    for k, (a, b) in enumerate(segs):
        length = b - a
        if length < MIN_WINDOW_S:
            continue
        if length <= WINDOW_S:
            out.append((k, a, b))
            continue
        starts = list(np.arange(a, b - WINDOW_S + 1e-9, HOP_S))
        if b - (starts[-1] + WINDOW_S) > 1e-6:
            starts.append(b - WINDOW_S)  # a last window flush with the segment's end
        out.extend((k, float(s), float(s) + WINDOW_S) for s in starts)
    return out


def cluster(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Cluster labels 0.. (order of first appearance) of L2-normed ``embeddings`` (n, d).

    Average linkage on cosine distance, cut at distance ``1 - threshold``; singleton clusters
    merged into the nearest cluster when ``n >= MIN_WINDOWS_FOR_SINGLETONS``.
    """
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1:
        return np.zeros(1, dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    labels = fcluster(tree, t=1.0 - threshold, criterion="distance")
    if n >= MIN_WINDOWS_FOR_SINGLETONS:
        ids, counts = np.unique(labels, return_counts=True)
        big = ids[counts > 1]
        if len(big):
            centroids = {c: _unit(embeddings[labels == c].mean(axis=0)) for c in big}
            for c in ids[counts == 1]:
                i = int(np.flatnonzero(labels == c)[0])
                labels[i] = max(big, key=lambda b: float(embeddings[i] @ centroids[b]))
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(c), len(order)) for c in labels], dtype=int)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


class Speakers(Reloadable, Expert):
    """``{"num_speakers": int, "turns": [{"start", "end", "speaker"}]}``.

    ``num_speakers`` is 0 when VAD found no speech (or none long enough to embed: then the
    turns are empty too). ``threshold``: the cosine similarity above which two clusters of
    windows are one voice. Without a VAD output the whole clip counts as one speech segment.
    """

    name = "speakers"
    version = "1"
    kind = "model"
    _transient = ("_encoder",)
    needs = ("vad",)
    schema = {"num_speakers": "number of distinct voices, 0 without speech",
              "turns": "[{start, end, speaker}] in seconds, speaker 0.. by first appearance"}

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, device: str = "cpu") -> None:
        self.threshold = threshold
        self.device = device
        self._encoder: Any = None
        self._lock = threading.Lock()

    def available(self) -> Availability:
        ok = need_modules("resemblyzer", "torch", "librosa", "webrtcvad", "scipy")
        if not ok:
            return ok
        from midashenglm.curation import resources

        return need_resource(resources.resemblyzer_weights_path)

    def load(self) -> None:
        if self._encoder is not None:
            return
        from midashenglm.curation import resources

        with warnings.catch_warnings():  # resemblyzer imports scipy.ndimage.morphology
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder
        self._encoder = VoiceEncoder(self.device, verbose=False,
                                     weights_fpath=resources.resemblyzer_weights_path())

    def embed(self, audio: np.ndarray, segs: list[tuple[float, float]]
              ) -> tuple[list[tuple[int, float, float]], np.ndarray]:
        """The windows inside ``segs`` and their d-vectors, ``(n, 256)`` float32, L2-normed."""
        wins = windows(segs)
        if not wins:
            return wins, np.zeros((0, 256), dtype=np.float32)
        self.load()
        import torch
        from resemblyzer.audio import wav_to_mel_spectrogram

        speech = speech_audio(audio, segs)
        rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64)))) if len(speech) else 0
        # Raise quiet speech to Resemblyzer's level; never lower it (as its preprocess_wav).
        gain = max(1.0, 10 ** (TARGET_DBFS / 20) / rms) if rms > 0 else 1.0
        mels = [wav_to_mel_spectrogram(
            (audio[int(round(a * SAMPLE_RATE)):int(round(b * SAMPLE_RATE))] * gain)
            .astype(np.float32)) for _, a, b in wins]
        out = np.zeros((len(wins), 256), dtype=np.float32)
        # Batch windows of equal length (the LSTM's last state must not see padding).
        by_len: dict[int, list[int]] = {}
        for i, m in enumerate(mels):
            by_len.setdefault(len(m), []).append(i)
        with self._lock, torch.no_grad():
            for idx in by_len.values():
                batch = torch.from_numpy(np.stack([mels[i] for i in idx])).to(self._encoder.device)
                out[idx] = self._encoder(batch).cpu().numpy()
        return wins, out

    def analyze(self, audio: np.ndarray, context: Mapping[str, Any]) -> dict[str, Any]:
        segs = speech_segments(context)
        if segs is None:
            segs = [(0.0, len(audio) / SAMPLE_RATE)]
        wins, emb = self.embed(audio, segs)
        if not wins:
            return {"num_speakers": 0, "turns": []}
        labels = cluster(emb, self.threshold)
        return {"num_speakers": int(labels.max()) + 1,
                "turns": _turns(segs, wins, labels)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": "Resemblyzer VoiceEncoder",
                "threshold": self.threshold}


def _turns(segs: list[tuple[float, float]], wins: list[tuple[int, float, float]],
           labels: np.ndarray) -> list[dict[str, Any]]:
    """Speaker turns from window labels (see the module docstring)."""
    pieces: list[tuple[float, float, int]] = []
    centres = np.array([(a + b) / 2 for _, a, b in wins])
    for k, (a, b) in enumerate(segs):
        mine = [i for i, w in enumerate(wins) if w[0] == k]
        if not mine:  # too short to embed: the nearest window's speaker
            i = int(np.argmin(np.abs(centres - (a + b) / 2)))
            pieces.append((a, b, int(labels[i])))
            continue
        mids = [(centres[i] + centres[j]) / 2 for i, j in zip(mine, mine[1:], strict=False)]
        bounds = [a, *mids, b]
        pieces.extend((bounds[n], bounds[n + 1], int(labels[i])) for n, i in enumerate(mine))
    turns: list[list[float]] = []
    for a, b, s in pieces:
        if turns and turns[-1][2] == s and a - turns[-1][1] <= MERGE_GAP_S:
            turns[-1][1] = b
        else:
            turns.append([a, b, s])
    return [{"start": rounded(a), "end": rounded(b), "speaker": int(s)} for a, b, s in turns]
