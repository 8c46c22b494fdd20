"""``midashenglm finetune`` on a 20-row CSV made here -> a merged model that ``serve`` answers with."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.serve_helpers import audio_part, free_port, wait_until_healthy, wav_bytes
from tests.training_helpers import CAPTIONS, cli, metric_rows, pulses, write_clips

PROMPT = "Describe the sound."


@pytest.mark.slow
def test_finetune_csv_then_serve(tiny_checkpoint, tmp_path):
    clips = write_clips(tmp_path / "clips", 20, seed=5)
    table = tmp_path / "clips" / "train.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["audio", "prompt", "answer"])
        for path, kind, _ in clips:
            writer.writerow([path.name, PROMPT, CAPTIONS[kind]])
    out = tmp_path / "finetuned"
    result = cli("finetune", "--model", str(tiny_checkpoint), "--data", str(table), "--out", str(out),
                 "--epochs", "4", "--lr", "3e-3", "--max-tokens", "512", "--no-progress")
    assert "LoRA adapters on" in result.stderr and "model written to" in result.stderr
    losses = list(metric_rows(out / "training").values())
    assert losses[-1] < losses[0]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MiDashengLMModel"]
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as weights:  # merged: the published key names
        keys = list(weights.keys())
    assert not any("lora" in k or "base_layer" in k for k in keys)
    assert any(k.startswith("decoder.model.layers.0.self_attn.q_proj") for k in keys)
    # The encoder was not trained (the default): weights and BatchNorm statistics as loaded.
    import torch

    from midashenglm.modeling.model import MiDashengLM

    before = MiDashengLM.from_pretrained(tiny_checkpoint).audio_encoder.state_dict()
    after = MiDashengLM.from_pretrained(out).audio_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "midashenglm", "serve", "--model", str(out),
                             "--port", str(port), "--device", "cpu", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        audio = wav_bytes(pulses("slow", 1.0, seed=99))
        body = {"model": out.name, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": [audio_part(audio),
                                                          {"type": "text", "text": PROMPT}]}]}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        answer = reply.json()["choices"][0]["message"]["content"]
        assert answer.strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # The server answers what the exported model generates.
    from midashenglm.processing import MiDashengLMProcessor

    model = MiDashengLM.from_pretrained(out)
    processor = MiDashengLMProcessor.from_pretrained(out)
    conv = [{"role": "user", "content": [
        {"type": "audio", "audio": pulses("slow", 1.0, seed=99), "sampling_rate": 16000},
        {"type": "text", "text": PROMPT}]}]
    batch = processor.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    tokens = model.generate(**batch, max_new_tokens=12, do_sample=False)
    expected = processor.batch_decode(tokens)[0]
    # The request's audio went through 16-bit WAV; greedy tokens agree on the first ones.
    assert answer.split()[:2] == expected.split()[:2]
