"""Collation for training (issue 13): labels cover exactly the assistant answers and their
<|im_end|>, token costs match the real sequences, failed samples are skipped and counted."""

from __future__ import annotations

import torch

from midashenglm.data.collate import Collator, text_token_counts
from midashenglm.data.dataset import LoadedSample, SampleError
from midashenglm.data.manifest import TrainingSample
from midashenglm.processing import IGNORE_INDEX
from tests.conftest import clip

ANSWERS = ("A dog barks twice.", "Then a car passes.")


def two_turns(ident: str = "s", seconds: tuple[float, float] = (1.3, 2.1)) -> LoadedSample:
    """System + 2 user turns, each with a clip, + 2 answers."""
    def part(k):
        return {"type": "audio", "path": f"{k}.wav", "duration": seconds[k]}

    messages = [{"role": "system", "content": "You describe sounds."},
                {"role": "user", "content": [part(0), {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": ANSWERS[0]},
                {"role": "user", "content": [{"type": "text", "text": "And now?"}, part(1)]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[1]}]}]
    sample = TrainingSample(ident, "d", "qa", messages, sum(seconds), f"m.jsonl:{ident}")
    conversation = [m if isinstance(m["content"], str) else {**m, "content": [
        {"type": "audio", "audio": clip(seconds[p["path"] == "1.wav"], seed=3), "sampling_rate": 16000}
        if p["type"] == "audio" else p for p in m["content"]]} for m in messages]
    return LoadedSample(sample, conversation)


def answer_spans(ids: list[int], tokenizer) -> set[int]:
    """Positions after each '<|im_start|>assistant\\n' up to and including the next <|im_end|>."""
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
    out = set()
    for i, token in enumerate(ids):
        if token == start and ids[i + 1:i + 1 + len(header)] == header:
            first = i + 1 + len(header)
            out.update(range(first, ids.index(end, first) + 1))
    return out


def test_labels_are_exactly_the_answers_and_their_im_end(processor):
    batch = Collator(processor)([two_turns(), SampleError("bad", "m.jsonl:9", "corrupt"),
                                 two_turns("t", (0.4, 0.4))])
    assert batch.sample_ids == ["s", "t"] and [e.id for e in batch.skipped] == ["bad"]
    inputs = batch.inputs
    for row in range(2):
        ids, labels = inputs["input_ids"][row], inputs["labels"][row]
        real = inputs["attention_mask"][row].bool()
        ids_list = ids[real].tolist()
        offset = int((~real).sum())  # left padding
        expected = {offset + k for k in answer_spans(ids_list, processor.tokenizer)}
        labelled = set(torch.nonzero(labels != IGNORE_INDEX).flatten().tolist())
        assert labelled == expected and len(expected) > 0
        assert torch.equal(labels[sorted(labelled)], ids[sorted(labelled)])
        text = processor.tokenizer.decode(ids[labels != IGNORE_INDEX])
        assert text == "".join(a + "<|im_end|>" for a in ANSWERS)
    # No generation prompt after the last answer: every row ends "<|im_end|>\n".
    assert set(inputs["input_ids"][:, -2].tolist()) == {processor.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert batch.num_label_tokens == int((inputs["labels"] != IGNORE_INDEX).sum())
    assert batch.padded_tokens == inputs["input_ids"].numel() and batch.num_tokens < batch.padded_tokens
    assert batch.padding_fraction == 1 - batch.num_tokens / batch.padded_tokens
    assert inputs["input_values"].shape[0] == 4 and abs(batch.audio_seconds - (1.3 + 2.1 + 0.8)) < 1e-6


def test_token_counts_match_the_collated_rows(processor):
    items = [two_turns("a"), two_turns("b", (0.1, 7.77))]
    counts = text_token_counts([x.sample for x in items], processor)
    batch = Collator(processor)(items)
    assert counts == batch.inputs["attention_mask"].sum(1).tolist()


def test_too_long_or_all_failed_batches(processor):
    long, short = two_turns("long", (9.0, 9.0)), two_turns("short", (0.5, 0.5))
    limit = text_token_counts([short.sample], processor)[0]
    batch = Collator(processor, max_length=limit)([long, short])
    assert batch.sample_ids == ["short"] and "max_length" in batch.skipped[0].message
    empty = Collator(processor)([SampleError("x", "m:1", "gone")])
    assert empty.inputs is None and empty.padding_fraction == 0 and len(empty.skipped) == 1
