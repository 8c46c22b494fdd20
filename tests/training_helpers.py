"""Shared pieces of the training tests: a tiny caption dataset made here, and running recipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "tiny"
# One-word answers: after the first steps the whole loss is about the class, so a short
# alignment run teaches the encoder the pulse rate (what the probe test measures).
CAPTIONS = {"slow": "slow", "fast": "fast"}
RATES = {"slow": 3.0, "fast": 9.0}  # amplitude modulation, Hz (patches come at 25 Hz)


def pulses(kind: str, seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """Coloured noise pulsing at 3 Hz (``slow``) or 9 Hz (``fast``), at a random level.

    The class lives in the envelope only: the carrier's colour (a random one-pole filter)
    and level vary freely, so the clips' mean spectra do not give the class away. A
    random-weight encoder's mean-pooled embeddings separate the classes poorly; an encoder
    trained on captions that name the rate separates them well (``tests/test_probe.py``).
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * RATES[kind] * t + rng.uniform(0, 2 * np.pi)))
    carrier = lfilter([1.0], [1.0, -rng.uniform(-0.9, 0.95)], rng.standard_normal(t.size))
    gain = 10 ** rng.uniform(-1.5, -0.5)
    return (gain * envelope * carrier / carrier.std()).astype(np.float32)


def write_clips(folder: Path, n: int, seed: int = 0) -> list[tuple[Path, str, float]]:
    """``n`` clips of 0.6-1.6 s, alternating slow/fast pulses: (path, kind, seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = ("slow", "fast")[i % 2]
        seconds = float(np.round(rng.uniform(0.6, 1.6), 2))
        path = folder / f"clip{seed}_{i:03d}.wav"
        sf.write(path, pulses(kind, seconds, seed * 100_003 + i), 16000)
        out.append((path, kind, seconds))
    return out


def write_caption_manifest(folder: Path, n: int = 16, seed: int = 0, dataset: str = "pulses") -> Path:
    """A JSONL training manifest of captioned pulses (flat form: audio, prompt, answer)."""
    import json

    rows = [{"id": f"{dataset}-{i}", "audio": path.name, "prompt": "Write an audio caption describing the sound",
             "answer": CAPTIONS[kind], "dataset": dataset, "task": "caption", "duration": seconds}
            for i, (path, kind, seconds) in enumerate(write_clips(folder, n, seed))]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def train_config(stage: str, run_dir: Path, checkpoint: Path, manifest: Path, *overrides: str):
    from midashenglm.training.config import load_config

    return load_config(CONFIGS / f"{stage}.yaml", [
        f"model.checkpoint={checkpoint}", f"data.train={manifest}", f"output_dir={run_dir}",
        "logging.tensorboard=false", *overrides])


def cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``python -m midashenglm ARGS`` in a child process (one torch thread, offline)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "midashenglm", *args], capture_output=True, text=True,
                            env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"midashenglm {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def metric_rows(run_dir: Path, key: str = "loss") -> dict[int, float]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in rows if key in r}
