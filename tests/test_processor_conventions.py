"""The processor's conventions: transformers' call forms, stated sampling rates, one audio
path and fast prompt ids.

Expected values are computed here independently: audio tokens from
``max(1, (1 + n // 160) // 4 // 5)`` after padding to 3200 samples, and resampled lengths
from the rates (3 s at 44.1 kHz -> 48000 samples at 16 kHz -> 15 tokens).
"""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

import midashenglm.processing as processing
from midashenglm import load_audio
from midashenglm.processing import (
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    MiDashengLMProcessor,
    pad_sequences,
)
from tests.conftest import clip

RATE = 44100


def expected_tokens(n: int) -> int:
    return max(1, (1 + max(n, 3200) // 160) // 4 // 5)


@pytest.fixture(scope="module")
def x44() -> np.ndarray:
    """3 s at 44.1 kHz: a tone whose pitch would be wrong if the rate were ignored."""
    t = np.arange(3 * RATE) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def x44_at_16k(x44) -> np.ndarray:
    wave = load_audio(x44, source_sample_rate=RATE)
    assert len(wave) == 3 * 16000 == 48000
    return wave


def ask(part, question="What is it?", system=None):
    conv = [] if system is None else [{"role": "system", "content": system}]
    return conv + [{"role": "user", "content": [part, {"type": "text", "text": question}]}]


def fresh(tiny_tokenizer) -> MiDashengLMProcessor:
    return MiDashengLMProcessor(tiny_tokenizer)


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


# ----------------------------------------------------------------- 1. transformers' call forms
def test_transformers_style_call_returns_a_batch_that_generates(processor, tiny_model):
    conversation = ask({"type": "audio", "audio": clip(2.0), "sampling_rate": 16000},
                       system=DEFAULT_SYSTEM_PROMPT)
    batch = processor.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True,
                                          return_dict=True, return_tensors="pt")
    assert {"input_ids", "attention_mask", "input_values", "audio_length"} <= set(batch)
    assert batch["audio_length"].tolist() == [32000]
    assert (batch["input_ids"] == processor.audio_token_id).sum() == expected_tokens(32000) == 10
    with torch.no_grad():
        out = tiny_model.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape == (1, 3)
    # the published model card's call
    card = processor.apply_chat_template(conversation=conversation, tokenize=True,
                                         add_generation_prompt=True, add_special_tokens=True,
                                         return_dict=True)
    assert torch.equal(card["input_ids"], batch["input_ids"])
    # left out, return_dict means True (ids alone would drop the audio); False: ids only
    assert torch.equal(processor.apply_chat_template(conversation, tokenize=True)["input_ids"],
                       batch["input_ids"])
    ids = processor.apply_chat_template(conversation, tokenize=True, return_dict=False)
    assert isinstance(ids, torch.Tensor) and torch.equal(ids, batch["input_ids"])


def test_return_tensors_pt_np_and_lists(processor):
    convs = [ask({"type": "audio", "audio": clip(1.0), "sampling_rate": 16000}),
             [{"role": "user", "content": "a longer text-only question about nothing"}]]
    pt = processor.apply_chat_template(convs, tokenize=True, return_tensors="pt")
    np_batch = processor.apply_chat_template(convs, tokenize=True, return_tensors="np")
    lists = processor.apply_chat_template(convs, tokenize=True, return_tensors=None)
    auto = processor.apply_chat_template(convs, tokenize=True)
    assert isinstance(np_batch["input_ids"], np.ndarray)
    assert np.array_equal(np_batch["input_ids"], pt["input_ids"].numpy())
    assert isinstance(lists["input_ids"], list) and lists["input_ids"] == pt["input_ids"].tolist()
    assert lists["audio_length"] == [16000]
    assert np.array_equal(lists["input_values"][0], pt["input_values"][0].numpy())
    assert torch.equal(auto["input_ids"], pt["input_ids"])
    with pytest.raises(ValueError, match="return_tensors"):
        processor.apply_chat_template(convs, tokenize=True, return_tensors="tf")


def test_unknown_arguments_are_refused_by_name(processor):
    conv = ask({"type": "audio", "audio": clip(1.0), "sampling_rate": 16000})
    with pytest.raises(TypeError, match="'bogus'"):
        processor.apply_chat_template(conv, tokenize=True, bogus=1)
    with pytest.raises(TypeError, match="'bogus'.*processor_kwargs"):
        processor.apply_chat_template(conv, tokenize=True, processor_kwargs={"bogus": 1})
    with pytest.raises(TypeError, match="'audios'.*`audio`"):
        processor(text="<|AUDIO|>hi", audios=[clip(1.0)])
    with pytest.raises(TypeError, match="'images'"):
        processor(text="hi", images=[1])
    with pytest.raises(NotImplementedError, match="load_audio_from_video"):
        processor.apply_chat_template(conv, tokenize=True, load_audio_from_video=True)


def test_processor_kwargs_reach_the_processor(processor):
    conv = ask({"type": "audio", "audio": clip(1.0), "sampling_rate": 16000})
    as_keywords = processor.apply_chat_template(conv, tokenize=True, padding="max_length",
                                                max_length=64, padding_side="right")
    nested = processor.apply_chat_template(
        conv, tokenize=True,
        processor_kwargs={"text_kwargs": {"padding": "max_length", "max_length": 64,
                                          "padding_side": "right"}})
    assert as_keywords["input_ids"].shape == (1, 64)
    assert torch.equal(as_keywords["input_ids"], nested["input_ids"])
    assert as_keywords["attention_mask"][0, 0] == 1 and as_keywords["attention_mask"][0, -1] == 0
    with pytest.raises(TypeError, match="both"):
        processor.apply_chat_template(conv, tokenize=True, padding=True,
                                      processor_kwargs={"padding": "max_length"})


def test_padding_truncation_and_multiples(processor):
    convs = [[{"role": "user", "content": "hi"}],
             [{"role": "user", "content": "a much longer question about the sound"}]]
    longest = processor(conversations=convs)
    n = longest["input_ids"].shape[1]
    eight = processor(conversations=convs, pad_to_multiple_of=8)
    assert eight["input_ids"].shape[1] == -(-n // 8) * 8
    assert torch.equal(eight["input_ids"][:, -n:], longest["input_ids"])
    with pytest.raises(ValueError, match="padding=False"):
        processor(conversations=convs, padding=False)
    ragged = processor(conversations=convs, padding=False, return_tensors=None)
    assert [len(r) for r in ragged["input_ids"]] == longest["attention_mask"].sum(1).tolist()
    cut = processor(conversations=convs, truncation=True, max_length=5)
    assert cut["input_ids"].shape == (2, 5)
    assert cut["input_ids"][1].tolist() == longest["input_ids"][1, :5].tolist()
    with pytest.raises(ValueError, match="max_length"):
        processor(conversations=convs, padding="max_length", max_length=5)
    audio = ask({"type": "audio", "audio": clip(1.0), "sampling_rate": 16000})
    with pytest.raises(ValueError, match="cut audio tokens"):
        processor(conversations=[audio], truncation=True, max_length=8)


def test_continue_final_message_tools_and_template_variables(processor, tiny_tokenizer):
    conv = [{"role": "user", "content": "What is it?"},
            {"role": "assistant", "content": "It is a"}]
    text = processor.apply_chat_template(conv, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nIt is a")
    ids = processor.apply_chat_template(conv, continue_final_message=True, tokenize=True)
    assert processor.tokenizer.decode(ids["input_ids"][0]).endswith("assistant\nIt is a")
    with pytest.raises(ValueError, match="not compatible"):
        processor.apply_chat_template(conv, continue_final_message=True, add_generation_prompt=True)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    with pytest.raises(ValueError, match="does not use 'tools'"):
        processor.apply_chat_template(conv, tools=[tool])
    template = ("{%- if tools %}{{ tools | map(attribute='function.name') | join(',') }}|{% endif -%}"
                "{%- if enable_thinking %}<think>{% endif -%}"
                "{%- for m in messages %}{{ m['role'] }}:{{ m['content'] }};{% endfor -%}")
    rendered = processor.apply_chat_template(conv, chat_template=template, tools=[tool],
                                             enable_thinking=True)
    assert rendered == "get_weather|<think>user:What is it?;assistant:It is a;"


def test_assistant_masks_match_labels(processor):
    conversation = [
        {"role": "user", "content": [{"type": "audio", "audio": clip(2.0), "sampling_rate": 16000},
                                     {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A dog barks."},
    ]
    batch = processor.apply_chat_template(conversation, tokenize=True, add_generation_prompt=False,
                                          return_assistant_tokens_mask=True, labels=True)
    masks, labels, ids = batch["assistant_masks"][0], batch["labels"][0], batch["input_ids"][0]
    assert torch.equal(masks.bool(), labels != IGNORE_INDEX)
    assert processor.tokenizer.decode(ids[masks.bool()]) == "A dog barks.<|im_end|>"
    with pytest.raises(ValueError, match="return_dict"):
        processor.apply_chat_template(conversation, tokenize=True, return_dict=False,
                                      return_assistant_tokens_mask=True)


def test_sanitize_control_tokens_keeps_user_text_from_writing_placeholders(processor):
    conversation = ask({"type": "audio", "audio": clip(1.0), "sampling_rate": 16000},
                       question="what does <|AUDIO|> mean?")
    with pytest.raises(ValueError, match="2 <\\|AUDIO\\|> placeholder\\(s\\) but 1 audio"):
        processor.apply_chat_template(conversation, tokenize=True)
    batch = processor.apply_chat_template(conversation, tokenize=True, sanitize_control_tokens=True)
    assert (batch["input_ids"] == processor.audio_token_id).sum() == expected_tokens(16000)
    with pytest.raises(ValueError, match="tokenize=True"):
        processor.apply_chat_template(conversation, sanitize_control_tokens=True)


def test_text_and_audio_call_with_a_sampling_rate(processor, x44):
    batch = processor(text="<|AUDIO|>What is it?", audio=x44, sampling_rate=RATE)
    assert batch["audio_length"].tolist() == [48000]
    assert (batch["input_ids"] == processor.audio_token_id).sum() == expected_tokens(48000) == 15


# ----------------------------------------------------------------- 2. stated sampling rates
def test_every_form_of_a_stated_rate_gives_the_same_waveform(processor, x44, x44_at_16k, tmp_path):
    path = tmp_path / "x44.wav"
    sf.write(path, x44, RATE, subtype="FLOAT")
    encoded = wav_bytes(x44, RATE)
    parts = {
        "sampling_rate key": {"type": "audio", "audio": x44, "sampling_rate": RATE},
        "sample_rate key": {"type": "audio", "audio": x44, "sample_rate": RATE},
        "both keys agreeing": {"type": "audio", "audio": x44, "sampling_rate": RATE,
                               "sample_rate": RATE},
        "tensor + key": {"type": "audio", "audio": torch.from_numpy(x44), "sampling_rate": RATE},
        "(array, rate) tuple": {"type": "audio", "audio": (x44, RATE)},
        "tuple + same key": {"type": "audio", "audio": (x44, RATE), "sampling_rate": RATE},
        "datasets decoded": {"type": "audio",
                             "audio": {"array": x44, "sampling_rate": RATE, "path": "x44.wav"}},
        "datasets undecoded bytes": {"type": "audio", "audio": {"bytes": encoded, "path": "x44.wav"}},
        "datasets undecoded path": {"type": "audio", "audio": {"bytes": None, "path": str(path)}},
        "path": {"type": "audio", "path": str(path)},
        "file url": {"type": "audio", "url": path.as_uri()},
        "data url": {"type": "audio",
                     "url": "data:audio/wav;base64," + base64.b64encode(encoded).decode()},
        "input_audio": {"type": "input_audio",
                        "input_audio": {"data": base64.b64encode(encoded).decode(), "format": "wav"}},
    }
    for name, part in parts.items():
        conversation = ask(part)
        for batch in (processor(conversations=[conversation]),
                      processor.apply_chat_template(conversation, tokenize=True, return_dict=True)):
            assert batch["audio_length"].tolist() == [48000], name
            assert torch.equal(batch["input_values"][0], torch.from_numpy(x44_at_16k)), name
            assert (batch["input_ids"] == processor.audio_token_id).sum() == 15, name
        assert np.array_equal(processor.load(part), x44_at_16k), name
        assert np.array_equal(processor.load_audio_parts(conversation)[0], x44_at_16k), name
    for audio, kwargs in (([x44], {"sampling_rate": RATE}), (x44, {"sampling_rate": RATE}),
                          ([(x44, RATE)], {}), ({"array": x44, "sampling_rate": RATE}, {})):
        batch = processor(text="<|AUDIO|>What is it?", audio=audio, **kwargs)
        assert torch.equal(batch["input_values"][0], torch.from_numpy(x44_at_16k))
    assert np.array_equal(processor.load(x44, sampling_rate=RATE), x44_at_16k)


def test_a_bare_array_is_16k_with_one_warning_per_processor(tiny_tokenizer):
    wave = clip(1.0)
    processor = fresh(tiny_tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = processor(conversations=[ask({"type": "audio", "audio": wave})])
        processor(conversations=[ask({"type": "audio", "audio": wave})])
        processor.load(wave)
    rate_warnings = [w for w in caught if "without its sampling rate" in str(w.message)]
    assert len(rate_warnings) == 1
    assert rate_warnings[0].filename == __file__  # it points at the caller's line
    assert first["audio_length"].tolist() == [16000]
    assert torch.equal(first["input_values"][0], torch.from_numpy(wave))
    explicit = fresh(tiny_tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explicit(conversations=[ask({"type": "audio", "audio": wave, "sampling_rate": 16000})])
        explicit(text="<|AUDIO|>hi", audio=[wave], sampling_rate=16000)
        explicit.apply_chat_template(ask({"type": "audio", "audio": wave}), tokenize=True,
                                     sampling_rate=16000)
        explicit.load_audio_parts(ask({"type": "audio", "audio": (wave, 16000)}))
    assert not [w for w in caught if "without its sampling rate" in str(w.message)]


def test_unknown_keys_and_conflicting_rates_are_errors(processor, x44):
    typo = ask({"type": "audio", "audio": x44, "sampling_rat": RATE})
    for call in (lambda: processor(conversations=[typo]),
                 lambda: processor.apply_chat_template(typo),
                 lambda: processor.apply_chat_template(typo, tokenize=True),
                 lambda: processor.load_audio_parts(typo),
                 lambda: processor.prompt_ids(typo, [48000])):
        with pytest.raises(ValueError, match="message 0, part 0: unknown key 'sampling_rat'"):
            call()
    second = [{"role": "system", "content": "Be brief."}] + typo
    with pytest.raises(ValueError, match="message 1, part 0: unknown key"):
        processor.load_audio_parts(second)
    with pytest.raises(ValueError, match="conversation 1, message 0, part 0: unknown key"):
        processor(conversations=[ask({"type": "audio", "audio": x44, "sampling_rate": RATE}), typo])
    with pytest.raises(ValueError, match="message 0, part 1: unknown key 'txt'"):
        processor.apply_chat_template([{"role": "user", "content": [
            {"type": "audio", "path": "a.wav"}, {"type": "text", "txt": "hi"}]}])
    with pytest.raises(ValueError, match="unknown key 'sr' in an audio dict"):
        processor.load({"type": "audio", "audio": {"array": x44, "sr": RATE}})
    conflicts = [
        {"type": "audio", "audio": (x44, RATE), "sampling_rate": 48000},
        {"type": "audio", "audio": x44, "sampling_rate": RATE, "sample_rate": 16000},
        {"type": "audio", "audio": {"array": x44, "sampling_rate": RATE}, "sample_rate": 22050},
    ]
    for part in conflicts:
        with pytest.raises(ValueError, match="message 0, part 0: conflicting sampling rates"):
            processor.load_audio_parts(ask(part))
    with pytest.raises(ValueError, match="sampling_rate=16000"):
        processor(text="<|AUDIO|>hi", audio=[(x44, RATE)], sampling_rate=16000)
    with pytest.raises(ValueError, match="exactly one of"):
        processor.load({"type": "audio", "audio": x44, "path": "x.wav"})
    with pytest.raises(ValueError, match="not fetched"):
        processor.load({"type": "audio", "url": "https://example.com/a.wav"})
    with pytest.raises(ValueError, match="positive integer"):
        processor.load({"type": "audio", "audio": x44, "sampling_rate": 44.1})


# ----------------------------------------------------------------- 3. one audio path, prompt ids
def conversations_for_prompt_ids(tmp_path):
    a, b, c = clip(1.0, seed=1), clip(0.1, seed=2), clip(30.0, seed=3)
    path = tmp_path / "b.wav"
    sf.write(path, clip(2.5, seed=4, sample_rate=22050), 22050)
    part = lambda wave: {"type": "audio", "audio": wave, "sampling_rate": 16000}  # noqa: E731
    return [
        ask(part(c), "Write an audio caption describing the sound", system=DEFAULT_SYSTEM_PROMPT),
        [{"role": "user", "content": [part(a), {"type": "text", "text": "and"}, part(b),
                                      {"type": "audio", "path": str(path)}]}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [part(a), {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": "A tone."},
            {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                         {"type": "audio", "audio": (c[:40000], 16000)}]},
        ],
        [{"role": "user", "content": "no audio here"}],
        ask({"type": "audio", "audio": (clip(3.0, sample_rate=RATE), RATE)}),
    ]


@pytest.mark.parametrize("system_prompt", [None, DEFAULT_SYSTEM_PROMPT])
def test_prompt_ids_equal_the_batch_path(tiny_tokenizer, tmp_path, system_prompt):
    processor = MiDashengLMProcessor(tiny_tokenizer, system_prompt=system_prompt)
    for k, conversation in enumerate(conversations_for_prompt_ids(tmp_path)):
        waves = processor.load_audio_parts(conversation)
        lengths = [len(w) for w in waves]
        for add_generation_prompt in (True, False):
            batch = processor(conversations=[conversation],
                              add_generation_prompt=add_generation_prompt)
            ids = processor.prompt_ids(conversation, lengths,
                                       add_generation_prompt=add_generation_prompt)
            assert ids == batch["input_ids"][0].tolist(), k
            counts = [expected_tokens(n) for n in lengths]
            assert ids.count(processor.audio_token_id) == sum(counts), k
        if waves:
            assert batch["audio_length"].tolist() == lengths
            assert all(w.dtype == np.float32 and w.ndim == 1 and len(w) >= 3200 for w in waves)


def test_prompt_ids_never_touch_audio(processor):
    conversation = ask({"type": "audio", "path": "/nonexistent/clip.wav"})
    ids = processor.prompt_ids(conversation, [480000])
    assert ids.count(processor.audio_token_id) == expected_tokens(480000) == 150
    with pytest.raises(ValueError, match="1 <\\|AUDIO\\|> placeholder\\(s\\) but 2 audio"):
        processor.prompt_ids(conversation, [16000, 16000])


def test_each_audio_part_is_decoded_once(processor, monkeypatch, tmp_path):
    calls = []
    real = processing.load_audio

    def counting(source, **kwargs):
        calls.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(processing, "load_audio", counting)
    conversation = conversations_for_prompt_ids(tmp_path)[1]
    processor(conversations=[conversation])
    assert len(calls) == 3
    calls.clear()
    processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    assert len(calls) == 3


def test_pad_sequences():
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_value=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_sequences([[1, 2, 3], [4], []], pad_value=-1, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, -1, -1], [-1, -1, -1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    empty_ids, empty_mask = pad_sequences([], pad_value=0)
    assert empty_ids.shape == empty_mask.shape == (0, 0)
    with pytest.raises(ValueError, match="side"):
        pad_sequences([[1]], 0, side="middle")


def test_batch_labels_are_padded_with_the_ignore_index(processor):
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Yo."}]
    long = [{"role": "user", "content": "a much longer question"},
            {"role": "assistant", "content": "A much longer answer."}]
    batch = processor(conversations=[short, long], labels=True, add_generation_prompt=False)
    pad = batch["attention_mask"] == 0
    assert pad[0].any() and (batch["labels"][pad] == IGNORE_INDEX).all()
    assert (batch["input_ids"][pad] == processor.tokenizer.pad_token_id).all()
