"""The engine's parts: scheduler (no tensors), abort, prepare, stop strings across tokens,
and one audio decode per clip per request."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import midashenglm.audio as audio_module
from midashenglm.conversation import build_conversation
from midashenglm.inference import Engine, EngineConfig, Request, SamplingParams
from midashenglm.inference.request import Clip, PreparedRequest
from midashenglm.inference.scheduler import Scheduler
from tests.conftest import REPO, clip

CAPTION = "Write an audio caption describing the sound"


def prepared(ids: int, max_new: int, seconds: float = 1.0, key: str = "a", rid: str | None = None) -> PreparedRequest:
    return PreparedRequest(0, Request([], request_id=rid), [1] * ids, [Clip(key, None, 5, seconds)],
                           prefix_len=ids - 1, max_new=max_new, t_start=0.0)


# ------------------------------------------------------------------ scheduler
def test_scheduler_imports_no_tensor_library():
    tree = ast.parse((REPO / "src/midashenglm/inference/scheduler.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "numpy"}


def test_scheduler_budgets_rows_audio_and_kv_slots():
    config = EngineConfig(max_num_seqs=3, max_kv_cache_tokens=2 * (100 + 20), max_batch_audio_seconds=25.0)
    scheduler = Scheduler(config)
    reqs = [prepared(100, 20, 10.0, key=str(i)) for i in range(5)]
    scheduler.add_requests(reqs)
    plan = scheduler.schedule(kv_width=0)
    # 10 s + 10 s fit 25 s of audio; the third clip would make 30 s.
    assert plan.scheduled_new_reqs == reqs[:2] and not plan.decode
    assert scheduler.running == reqs[:2] and list(scheduler.waiting) == reqs[2:]
    # A running batch 110 wide: 2 rows x (110 + 20) > 240 KV slots, so nothing joins.
    scheduler.finish([reqs[0]])
    assert scheduler.schedule(kv_width=110).scheduled_new_reqs == []
    plan = scheduler.schedule(kv_width=100)
    assert plan.scheduled_new_reqs == [reqs[2]] and plan.decode


def test_scheduler_shares_audio_seconds_of_one_clip_and_takes_an_oversized_request_alone():
    scheduler = Scheduler(EngineConfig(max_batch_audio_seconds=15.0, max_kv_cache_tokens=50))
    same = [prepared(10, 5, 10.0, key="clip") for _ in range(3)]
    scheduler.add_requests(same)
    assert scheduler.schedule(0).scheduled_new_reqs == same  # one distinct clip: 10 s
    huge = prepared(400, 5, 30.0, key="huge")
    lone = Scheduler(EngineConfig(max_batch_audio_seconds=15.0, max_kv_cache_tokens=50))
    lone.add_requests([huge, prepared(10, 5)])
    assert lone.schedule(0).scheduled_new_reqs == [huge]  # over every budget, yet alone it runs


def test_scheduler_preempts_to_the_front_to_run_alone_and_aborts():
    scheduler = Scheduler(EngineConfig())
    a, b, c = prepared(10, 5, rid="a"), prepared(10, 5, rid="b"), prepared(10, 5, rid="c")
    scheduler.add_requests([a, b, c])
    assert scheduler.schedule(0).scheduled_new_reqs == [a, b, c]
    a.num_output_tokens = 3
    scheduler.preempt([a, b])
    assert list(scheduler.waiting) == [a, b] and a.solo and a.num_output_tokens == 0
    assert scheduler.schedule(10).scheduled_new_reqs == []  # c runs; preempted ones wait to run alone
    scheduler.finish([c])
    assert scheduler.schedule(0).scheduled_new_reqs == [a]
    waiting, running = scheduler.abort({"a", "b"})
    assert waiting == [b] and running == [a] and not scheduler.has_unfinished_requests()


def test_engine_config_is_validated_and_overrides_name_fields(tiny_model, processor):
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=0)
    with pytest.raises(TypeError, match="max_batch_size"):
        Engine(tiny_model, processor, max_batch_size=2)
    engine = Engine(tiny_model, processor, EngineConfig(max_num_seqs=4), prefix_cache_items=0)
    assert engine.config == EngineConfig(max_num_seqs=4, prefix_cache_items=0)


# ------------------------------------------------------------- prepare, abort
def test_prepare_refuses_before_anything_is_queued(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    engine.context_window = 60
    with pytest.raises(ValueError, match="context window is 60 tokens"):
        engine.prepare(Request(build_conversation(clip(35.0), CAPTION, sampling_rate=16000)))
    with pytest.raises(ValueError, match="no audio samples"):
        engine.prepare(Request(build_conversation(np.zeros(0, np.float32), CAPTION)))
    ok = engine.prepare(Request(build_conversation(clip(1.0), CAPTION), SamplingParams(max_new_tokens=4)))
    assert engine.stats["requests"] == 0  # nothing ran
    with engine:
        result = engine.submit(ok).result(timeout=60)
    assert result.ok and result.prompt_tokens == len(ok.ids)


def test_abort_stops_a_running_row_and_drops_a_waiting_request(tiny_model, processor):
    engine = Engine(tiny_model, processor, max_num_seqs=1)
    aborted, both_submitted = threading.Event(), threading.Event()

    def on_text(_piece: str) -> None:  # the engine's worker thread
        if not aborted.is_set():
            assert both_submitted.wait(60)  # an abort only reaches submitted requests
            aborted.set()
            engine.abort("running")
            engine.abort("waiting")

    with engine:
        running = engine.submit(Request(build_conversation(clip(1.0), CAPTION, sampling_rate=16000),
                                        SamplingParams(max_new_tokens=200, ignore_eos=True), "running"),
                                on_text=on_text)
        waiting = engine.submit(Request(build_conversation(clip(2.0, seed=1), CAPTION, sampling_rate=16000),
                                        SamplingParams(max_new_tokens=8), "waiting"))
        both_submitted.set()
        first, second = running.result(timeout=120), waiting.result(timeout=120)
    assert aborted.is_set()
    assert first.finish_reason == "abort" and 0 < first.completion_tokens < 200 and first.error is None
    assert second.finish_reason == "abort" and second.completion_tokens == 0
    assert engine.stats["aborted"] == 2


# ------------------------------------------------------------- stop strings
def _stops_across_and_inside_tokens(engine, full):
    """A stop string spanning two tokens, and one strictly inside one token (plain ASCII,
    each found first where it was taken), with their character offsets."""
    decode = engine.tokenizer.decode
    texts = [decode(full.token_ids[:k], skip_special_tokens=True) for k in range(len(full.token_ids) + 1)]
    spanning = inside = None
    for k in range(2, len(texts) - 2):
        before, this, after = texts[k], texts[k + 1], texts[k + 2]
        if not (this.startswith(before) and after.startswith(this)):
            continue  # a token that ends inside a character
        piece, following = this[len(before):], after[len(this):]
        if not (piece + following).isascii() or not (piece + following).isprintable():
            continue
        candidate = piece[-1:] + following[:1]
        if spanning is None and len(candidate) == 2 and full.text.find(candidate) == len(this) - 1:
            spanning = (candidate, len(this) - 1)
        if inside is None and len(piece) >= 3 and full.text.find(piece[1:-1]) == len(before) + 1:
            inside = (piece[1:-1], len(before) + 1)
    return spanning, inside


def test_stop_strings_across_and_inside_tokens_are_held_back_when_streaming(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    conv = build_conversation(clip(2.5, seed=1), CAPTION)
    full = engine.generate([Request(conv, SamplingParams(max_new_tokens=40, ignore_eos=True))])[0]
    spanning, inside = _stops_across_and_inside_tokens(engine, full)
    assert spanning and inside, f"no usable stop strings in {full.text!r}"
    for stop, at in (spanning, inside):
        sampling = SamplingParams(max_new_tokens=40, ignore_eos=True, stop=(stop,))
        pieces: list[str] = []
        seen: list[str] = []

        def on_text(piece: str, pieces=pieces, seen=seen) -> None:
            pieces.append(piece)
            seen.append("".join(pieces))

        with Engine(tiny_model, processor) as streaming:
            result = streaming.submit(Request(conv, sampling), on_text=on_text).result(timeout=60)
        assert result.text == full.text[:at] and result.finish_reason == "stop"
        assert result.token_ids == full.token_ids[: result.completion_tokens] < full.token_ids
        # Nothing streamed was later taken back: every partial text is a prefix of the final one.
        assert all(result.text.startswith(partial) for partial in seen)
        assert "".join(pieces) == result.text


# ------------------------------------------------------- one decode per clip
@pytest.fixture
def count_decodes(monkeypatch):
    """Every decode of encoded audio (soundfile or PyAV) and every resampling, counted."""
    counts = {"decode": 0, "resample": 0}
    decode, stream = audio_module._decode, audio_module.soxr.ResampleStream

    def counting_decode(*args, **kwargs):
        counts["decode"] += 1
        return decode(*args, **kwargs)

    def counting_stream(*args, **kwargs):  # one soxr stream per resampled clip
        counts["resample"] += 1
        return stream(*args, **kwargs)

    monkeypatch.setattr(audio_module, "_decode", counting_decode)
    monkeypatch.setattr(audio_module.soxr, "ResampleStream", counting_stream)
    return counts


def test_engine_decodes_and_resamples_each_clip_once_per_request(tiny_model, processor, tmp_path, count_decodes):
    path = tmp_path / "tone.wav"
    sf.write(path, clip(2.0, sample_rate=44100), 44100)
    engine = Engine(tiny_model, processor)
    requests = [Request(build_conversation(str(path), q), SamplingParams(max_new_tokens=3))
                for q in ("What is it?", "Where?", "Who?")]
    assert all(r.ok for r in engine.generate(requests))
    assert count_decodes == {"decode": 3, "resample": 3}


def test_cli_decodes_each_clip_once_per_request(tiny_checkpoint, tmp_path, count_decodes, monkeypatch):
    from typer.testing import CliRunner

    from midashenglm.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "tone.wav"
    sf.write(path, clip(1.5, sample_rate=22050), 22050)
    out = CliRunner().invoke(app, ["ask", str(path), "What is it?", "Is there speech?", "--model",
                                   str(tiny_checkpoint), "--max-new-tokens", "2"])
    assert out.exit_code == 0, out.output
    assert count_decodes == {"decode": 2, "resample": 2}  # two questions: two requests


def test_prepared_request_is_not_decoded_again(tiny_model, processor, tmp_path, count_decodes):
    path = Path(tmp_path / "tone.flac")
    sf.write(path, clip(1.0, sample_rate=48000), 48000)
    engine = Engine(tiny_model, processor)
    item = engine.prepare(Request(build_conversation(str(path), CAPTION), SamplingParams(max_new_tokens=2)))
    with engine:
        assert engine.submit(item).result(timeout=60).ok
    assert count_decodes == {"decode": 1, "resample": 1}


def test_abort_of_an_unknown_or_finished_id_touches_no_later_request(tiny_model, processor):
    conv = build_conversation(clip(1.0), CAPTION, sampling_rate=16000)
    with Engine(tiny_model, processor) as engine:
        first = engine.submit(Request(conv, SamplingParams(max_new_tokens=3), "r1")).result(timeout=60)
        engine.abort("r1")  # finished already (a disconnect racing the answer)
        engine.abort("never-submitted")
        engine.abort(None)  # type: ignore[arg-type]
        again = engine.submit(Request(conv, SamplingParams(max_new_tokens=3), "r1")).result(timeout=60)
    later = engine.generate([Request(conv, SamplingParams(max_new_tokens=3))])[0]
    assert first.finish_reason == again.finish_reason == later.finish_reason == "length"
    assert again.token_ids == first.token_ids == later.token_ids
    assert not engine._aborted and engine.stats["aborted"] == 0


def test_context_error_names_what_to_shorten(tiny_model, processor):
    engine = Engine(tiny_model, processor)
    engine.context_window = 40
    with pytest.raises(ValueError, match=r"all text, no audio\) .* shorten the text$"):
        engine.prepare(Request([{"role": "user", "content": "word " * 60}]))
    with pytest.raises(ValueError, match="shorten the audio"):
        engine.prepare(Request(build_conversation(clip(30.0), "Hi?", sampling_rate=16000)))


def test_engine_config_refuses_wrong_types():
    for bad in (dict(max_batch_audio_seconds=True), dict(enable_prefix_sharing="no"),
                dict(max_batch_audio_seconds=float("nan")), dict(prefix_cache_items=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EngineConfig(**bad)


def test_a_rate_beside_encoded_audio_must_be_the_loading_rate(processor, tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, clip(1.0, sample_rate=44100), 44100)
    expected = audio_module.load_audio(str(path))
    same = processor.load({"type": "audio", "path": str(path), "sampling_rate": 16000})
    assert np.array_equal(same, expected)  # transformers' reading: the rate to load at
    with pytest.raises(ValueError, match="sampling_rate=8000 beside encoded audio"):
        processor.load({"type": "audio", "path": str(path), "sampling_rate": 8000})


# ------------------------------------------- an answer cut inside a multi-byte character
def test_an_answer_cut_inside_a_character_drops_the_partial_bytes(processor):
    """vLLM's detokenizer drops the U+FFFD of an incomplete UTF-8 sequence at the end of an
    answer cut by the token limit; so do we, streamed or not (found by scripts/check_vllm.py)."""
    from midashenglm.inference.output import RequestState, StepClock

    tokenizer = processor.tokenizer
    word = "né€"  # 1 + 2 + 3 bytes
    full = tokenizer.encode(word, add_special_tokens=False)
    cut = next(n for n in range(1, len(full)) if tokenizer.decode(full[:n]).endswith("\ufffd"))
    expected = tokenizer.decode(full[:cut]).rstrip("\ufffd")
    assert expected != tokenizer.decode(full[:cut])  # the cut really is inside a character
    for streamed in (False, True):
        pieces: list[str] = []
        item = PreparedRequest(0, Request([{"role": "user", "content": "x"}],
                                          SamplingParams(max_new_tokens=cut)),
                               ids=[1], clips=[], prefix_len=0, max_new=cut, t_start=0.0,
                               on_text=pieces.append if streamed else None)
        state = RequestState(item, tokenizer, frozenset(), StepClock(0.0, 0.0, 0.0, 0.0))
        done = [state.add(token, 1.0) for token in full[:cut]]
        assert done[-1] and state.finish == "length"
        result = state.result(tokenizer)
        assert result.text == expected and result.token_ids == full[:cut]
        if streamed:
            assert "".join(pieces) == result.text
