"""Shared fixtures: a tiny checkpoint built offline, real speech from espeak-ng, shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MIDASHENGLM_SHARED", REPO.parent / "shared"))
# .ci/run sets this: there, data and tools that tests would otherwise skip without are required.
REQUIRED = os.environ.get("MIDASHENGLM_REQUIRE_SHARED") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip a test whose resource is absent in a user's clone, but fail under CI."""
    if condition:
        return
    if REQUIRED:
        pytest.fail(f"required under .ci/run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    need(SHARED.is_dir(), f"shared data folder {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from midashenglm.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def processor(tiny_tokenizer):
    from midashenglm.processing import MiDashengLMProcessor

    return MiDashengLMProcessor(tiny_tokenizer)


def make_config(processor, text_config=None, **encoder_overrides):
    from midashenglm.modeling.config import DECODER_PRESETS, DashengConfig, MiDashengLMConfig

    return MiDashengLMConfig(
        audio_encoder_config=DashengConfig.from_preset("tiny", **encoder_overrides).to_dict(),
        text_config=text_config or DECODER_PRESETS["tiny"],
        audio_token_id=processor.audio_token_id,
    )


def make_model(processor, text_config=None, seed=0, **encoder_overrides):
    from midashenglm.modeling.model import MiDashengLM

    torch.manual_seed(seed)
    model = MiDashengLM(make_config(processor, text_config, **encoder_overrides)).eval()
    randomize_batchnorm(model.audio_encoder.init_bn)
    gen = model.generation_config
    gen.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen.pad_token_id = processor.tokenizer.pad_token_id
    return model


def randomize_batchnorm(bn: torch.nn.BatchNorm2d) -> None:
    """Non-trivial running statistics, so that loading and applying them is really tested."""
    with torch.no_grad():
        bn.running_mean.uniform_(-60.0, -10.0)
        bn.running_var.uniform_(50.0, 400.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)


@pytest.fixture(scope="session")
def tiny_model(processor):
    return make_model(processor)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model, processor) -> Path:
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    tiny_model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    """An inference engine on the tiny checkpoint, one per test module (the server tests)."""
    from midashenglm.inference import Engine

    with Engine.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32") as eng:
        yield eng


def clip(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Noise plus a tone: a realistic dynamic range for the 120 dB floor."""
    rng = np.random.default_rng(seed)
    n = max(1, round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


def padded_batch(seconds):
    """Clips of these lengths: (waves, zero-padded (B, N) batch, lengths)."""
    waves = [torch.from_numpy(clip(s, seed=i)) for i, s in enumerate(seconds)]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return waves, batch, lengths


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """Real synthetic speech from espeak-ng (22.05 kHz wav)."""
    exe = shutil.which("espeak-ng")
    need(exe is not None, "espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run(
        [exe, "-w", str(path), "Hello world, this is a test of the audio language model."],
        check=True,
        capture_output=True,
    )
    return path
