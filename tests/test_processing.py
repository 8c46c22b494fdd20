"""Chat template, audio-token counts and expansion, padding and training labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from midashenglm.processing import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    MiDashengLMProcessor,
    num_audio_tokens,
)
from tests.conftest import clip


def official_token_count(n: int) -> int:
    """The published processor's arithmetic, written out independently."""
    n = max(n, 3200)  # clips shorter than 0.2 s are zero-padded to 3200 samples
    frames = int(1 + ((n + 512) - 512) / 160)
    return max(1, frames // 4 // 5)


def test_token_count_formula_every_10ms_to_60s(processor):
    for ms in range(10, 60_001, 10):
        n = ms * 16
        expected = official_token_count(n)
        assert num_audio_tokens(n) == expected, ms
        assert processor.num_audio_tokens(n) == expected, ms
        # the encoder always has enough frames for that many tokens
        assert (1 + max(n, 3200) // 160) // 4 >= 5 * expected, ms
    assert num_audio_tokens(160_000) == 50
    assert num_audio_tokens(480_000) == 150


def test_processor_expands_to_the_count_for_many_lengths(processor):
    rng = np.random.default_rng(0)
    lengths = sorted({int(x) for x in rng.integers(160, 16000 * 40, size=40)} | {160, 3199, 3200, 3520})
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": np.zeros(n, np.float32) + 0.01}]}]
        for n in lengths
    ]
    batch = processor(conversations=conversations)
    slots = (batch["input_ids"] == processor.audio_token_id).sum(-1).tolist()
    assert slots == [official_token_count(n) for n in lengths]
    assert batch["audio_length"].tolist() == [max(n, 3200) for n in lengths]


def test_chat_template_renders_chatml(processor):
    conversation = [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": "a.wav"},
                {"type": "text", "text": "Write an audio caption describing the sound"},
            ],
        },
    ]
    text = processor.apply_chat_template(conversation)
    assert text == (
        "<|im_start|>system\nYou are a helpful language and speech assistant.<|im_end|>\n"
        "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>"
        "Write an audio caption describing the sound<|im_end|>\n<|im_start|>assistant\n"
    )
    assert processor.apply_chat_template(conversation, add_generation_prompt=False).endswith(
        "<|im_end|>\n"
    )
    # The saved tokenizer carries the same template (one template everywhere).
    assert processor.tokenizer.chat_template == CHAT_TEMPLATE


def test_system_prompt_option(tiny_tokenizer):
    processor = MiDashengLMProcessor(tiny_tokenizer, system_prompt=DEFAULT_SYSTEM_PROMPT)
    text = processor.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT)


def test_several_audios_in_order_and_text_only_rows(processor):
    a, b = clip(1.0, seed=1), clip(2.5, seed=2)
    conversations = [
        [{"role": "user", "content": [
            {"type": "audio", "audio": a}, {"type": "text", "text": "and"}, {"type": "audio", "audio": b},
        ]}],
        [{"role": "user", "content": "no audio here"}],
    ]
    batch = processor(conversations=conversations)
    assert batch["audio_length"].tolist() == [len(a), len(b)]
    assert torch.equal(batch["input_values"][0, : len(a)], torch.from_numpy(a))
    row = batch["input_ids"][0].tolist()
    assert row.count(processor.audio_token_id) == num_audio_tokens(len(a)) + num_audio_tokens(len(b))
    assert row.count(processor.audio_bos_id) == 2 and row.count(processor.audio_eos_id) == 2
    assert (batch["input_ids"][1] == processor.audio_token_id).sum() == 0


def test_left_padding(processor):
    short = [{"role": "user", "content": "hi"}]
    long = [{"role": "user", "content": "a much longer question about the sound"}]
    batch = processor(conversations=[short, long])
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert (batch["input_ids"][0][mask[0] == 0] == processor.tokenizer.pad_token_id).all()


def test_text_with_bare_audio_token_gets_wrapped(processor):
    wave = clip(1.0)
    wrapped = processor(text=["<|audio_bos|><|AUDIO|><|audio_eos|>hi"], audio=[wave])
    bare = processor(text=["<|AUDIO|>hi"], audio=[wave])
    assert torch.equal(wrapped["input_ids"], bare["input_ids"])


def test_placeholder_and_clip_counts_must_agree(processor):
    with pytest.raises(ValueError, match="1 <\\|AUDIO\\|> placeholder\\(s\\) but 2 audio"):
        processor(text=["<|AUDIO|> what is it"], audio=[clip(1.0), clip(1.0)])


def test_bad_messages_are_named(processor):
    with pytest.raises(ValueError, match="message 0, part 0"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}])
    with pytest.raises(ValueError, match="message 1"):
        processor.apply_chat_template([{"role": "user", "content": "x"}, {"content": "y"}])


def test_training_labels_cover_only_the_answers(processor):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "audio", "audio": clip(2.0)}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A dog barks."},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "In a park."},
    ]
    batch = processor(conversations=[conversation], labels=True, add_generation_prompt=False, padding_side="right")
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert ids.shape == labels.shape
    learned = labels[labels != IGNORE_INDEX].tolist()
    decoded = processor.tokenizer.decode(learned)
    assert decoded == "A dog barks.<|im_end|>In a park.<|im_end|>"
    # nothing of the prompt, the assistant header, the audio or the padding is a target
    assert (labels[ids == processor.audio_token_id] == IGNORE_INDEX).all()
    header = processor.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    text = processor.tokenizer.decode(ids[labels == IGNORE_INDEX])
    assert "assistant\n" in text and len(header) > 0


def test_labels_need_an_answer(processor):
    with pytest.raises(ValueError, match="no assistant answer"):
        processor(conversations=[[{"role": "user", "content": "hi"}]], labels=True)


def test_save_and_reload(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    again = MiDashengLMProcessor.from_pretrained(tmp_path)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": clip(1.0)}, {"type": "text", "text": "hi"}]}]
    first, second = processor(conversations=[conversation]), again(conversations=[conversation])
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert (tmp_path / "preprocessor_config.json").is_file()
