"""The OpenAI-compatible server, over real HTTP on 127.0.0.1, with the tiny checkpoint.

Two apps share one engine: ``server`` with roomy limits and an audio_url allow-list, and
``strict`` (max_queue 1, 0.5 s timeout, audio_url off as by default) for 429 and 504. Both
see the engine through an :class:`EngineProbe`, which lets a test hold a request at its
first token (synchronising on events, never on sleeps).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading

import httpx
import numpy as np
import openai
import pytest

from midashenglm.conversation import build_conversation
from midashenglm.errors import UserError
from midashenglm.inference import Engine, Request, SamplingParams
from midashenglm.serve.app import ServeConfig, create_app
from midashenglm.serve.audio_input import allowed_dirs
from tests.conftest import clip
from tests.serve_helpers import (
    EngineProbe,
    ServerThread,
    audio_part,
    b64,
    chat_body,
    free_port,
    sse_payloads,
    wait_until,
    wait_until_healthy,
    wav_bytes,
)

MAX_BODY = 2 * 2**20


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    (allowed / "one second.wav").write_bytes(wav_bytes(clip(1.0, seed=3)))
    (outside / "secret.wav").write_bytes(wav_bytes(clip(1.0, seed=4)))
    (allowed / "link.wav").symlink_to(outside / "secret.wav")
    return allowed, outside


@pytest.fixture(scope="module")
def server(engine, folders):
    config = ServeConfig(served_model_name="tiny", max_audio_seconds=20, max_tokens_limit=3000,
                         max_body_bytes=MAX_BODY, max_queue=64, request_timeout=120,
                         allowed_audio_dirs=allowed_dirs([str(folders[0])]))
    probe = EngineProbe(engine)
    with ServerThread(create_app(probe, config)) as srv:
        srv.probe = probe
        yield srv


@pytest.fixture(scope="module")
def strict(engine):
    config = ServeConfig(served_model_name="tiny", max_queue=1, request_timeout=0.5,
                         max_tokens_limit=3000)
    probe = EngineProbe(engine)
    with ServerThread(create_app(probe, config)) as srv:
        srv.probe = probe
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def post(client: httpx.Client, body: dict, **kw) -> httpx.Response:
    return client.post("/v1/chat/completions", json=body, **kw)


def assert_error(response: httpx.Response, status: int, code: str, *in_message: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    for text in in_message:
        assert text in error["message"], error
    return error


def alone(engine, wave: np.ndarray, question: str, max_new: int) -> str:
    """What the engine itself answers (greedy): the server must give the same text."""
    conversation = build_conversation(wave, question, sampling_rate=16000)
    return engine.generate([Request(conversation, SamplingParams(max_new_tokens=max_new))])[0].text


def decoded(wav: bytes) -> np.ndarray:
    from midashenglm.audio import load_audio

    return load_audio(wav)


# ----------------------------------------------------------------------------- basics
def test_health_models_and_unknown_routes(http):
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    assert health["limits"]["max_queue"] == 64 and health["limits"]["audio_url_files"] is True

    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 4096
    assert http.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_error(http.get("/v1/models/gpt-4o"), 404, "model_not_found", "tiny")
    assert http.get("/v1/nothing").json()["error"]["type"] == "not_found_error"


def test_openai_client_answers_like_the_engine(server, engine):
    wav = wav_bytes(clip(2.0, seed=1))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}},
        {"type": "text", "text": "Describe the sound"}]}]

    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24)
    text = reply.choices[0].message.content
    assert reply.model == "tiny" and reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert text == alone(engine, decoded(wav), "Describe the sound", 24)
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 24
    assert usage.prompt_tokens > 10  # 2 s of audio alone are 10 tokens

    pieces, finish = [], None
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    for chunk in chunks:
        assert chunk.model == "tiny" and chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text
    assert len(pieces) > 1, "the answer came in one piece: not streamed"
    assert finish == reply.choices[0].finish_reason
    # As OpenAI: every chunk but the last has usage None; the last has no choices, the usage.
    assert all(chunk.usage is None and chunk.choices for chunk in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == usage.prompt_tokens


def test_stream_is_server_sent_events_ending_with_done(http):
    body = chat_body(audio_part(wav_bytes(clip(0.5))), max_tokens=8, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_usage_chunks(http, include_usage):
    body = chat_body(audio_part(wav_bytes(clip(0.7))), max_tokens=8, stream=True,
                     stream_options={"include_usage": include_usage})
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = sse_payloads(list(response.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    if not include_usage:  # no usage field anywhere
        assert all("usage" not in chunk for chunk in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        return
    *answer, last = chunks
    assert all(chunk["usage"] is None and len(chunk["choices"]) == 1 for chunk in answer)
    assert answer[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 8 and usage["audio_tokens"] == 3


def test_sampling_parameters_reach_the_engine(http):
    wav = wav_bytes(clip(1.0, seed=2))
    base = chat_body(audio_part(wav), max_completion_tokens=12, temperature=1.5, top_p=0.9,
                     seed=7, ignore_eos=True)
    first, again = post(http, base).json(), post(http, base).json()
    assert first["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    assert first["usage"]["completion_tokens"] == 12  # max_completion_tokens, eos ignored
    other = post(http, {**base, "seed": 8}).json()
    assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]

    greedy = post(http, chat_body(audio_part(wav), max_tokens=40)).json()
    text = greedy["choices"][0]["message"]["content"]
    stop = text[5:8]
    assert stop.strip(), "the tiny model's answer should have text to stop at"
    stopped = post(http, chat_body(audio_part(wav), max_tokens=40, stop=[stop])).json()
    assert stopped["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_concurrent_requests_are_batched(server, engine):
    waves = [wav_bytes(clip(0.5 + i * 0.4, seed=i)) for i in range(8)]
    expected = [alone(engine, decoded(w), "What do you hear?", 16) for w in waves]
    batches_before = engine.stats["batches"]
    release = threading.Event()
    probe = server.probe.reset()
    probe.gate = release  # every first token waits until the eight below are all submitted

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused",
                                    max_retries=0)
        # A long request first keeps the engine busy, so the eight below queue up together.
        blocker = asyncio.create_task(client.chat.completions.create(
            model="tiny", messages=chat_body(audio_part(waves[0]))["messages"],
            max_tokens=600, extra_body={"ignore_eos": True}))
        await asyncio.to_thread(wait_until, lambda: probe.started == [0], 60, "the blocker")
        replies = asyncio.gather(*(
            client.chat.completions.create(model="tiny", max_tokens=16,
                                           messages=chat_body(audio_part(w))["messages"])
            for w in waves))
        await asyncio.to_thread(wait_until, lambda: len(probe.submitted) == 9, 60, "the submits")
        release.set()
        replies = await replies
        await blocker
        return replies

    try:
        replies = asyncio.run(run())
    finally:
        release.set()
        probe.reset()
    assert [r.choices[0].message.content for r in replies] == expected
    # One batch: the blocker's; the eight waited together and joined it as one group.
    assert engine.stats["batches"] - batches_before == 1


# ----------------------------------------------------------------------------- errors
def test_body_size_limit_is_checked_before_reading(http):
    huge = chat_body(audio_part(os.urandom(MAX_BODY)))
    assert_error(post(http, huge), 413, "body_too_large", "MiB")

    def chunked():  # no Content-Length: the running count must stop it
        payload = json.dumps(huge).encode()
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    response = http.post("/v1/chat/completions", content=chunked(),
                         headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "body_too_large")


def test_bad_audio_is_a_400_naming_the_part(http):
    good = audio_part(wav_bytes(clip(0.5)))
    bad_b64 = {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv!!", "format": "wav"}}
    err = assert_error(post(http, chat_body(good, bad_b64)), 400, "invalid_base64",
                       "messages[0].content[1]", "base64")
    assert err["param"] == "messages[0].content[1].input_audio.data"

    garbage = audio_part(b"RIFF\x00\x00\x00\x00WAVE" + os.urandom(4000))
    assert_error(post(http, chat_body(good, garbage)), 400, "invalid_audio",
                 "messages[0].content[1]", "decode")
    truncated = audio_part(wav_bytes(clip(1.0))[:8000])
    assert_error(post(http, chat_body(truncated)), 400, "invalid_audio", "messages[0].content[0]")
    missing = {"type": "input_audio", "input_audio": {"format": "wav"}}
    assert_error(post(http, chat_body(missing)), 400, "invalid_content_part",
                 "messages[0].content[0].input_audio.data")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert_error(post(http, chat_body(image)), 400, "unsupported_content_type", "image_url")
    # None of that hurt the server.
    assert post(http, chat_body(good, max_tokens=4)).status_code == 200


def test_limits_on_audio_length_and_tokens(http):
    long = audio_part(wav_bytes(clip(21.0)))
    assert_error(post(http, chat_body(long)), 400, "audio_too_long", "21.00 s", "20 s")
    twelve = audio_part(wav_bytes(clip(12.0)))
    assert_error(post(http, chat_body(twelve, twelve)), 400, "audio_too_long",
                 "messages[0].content[1]", "earlier parts")

    short = audio_part(wav_bytes(clip(0.5)))
    err = assert_error(post(http, chat_body(short, max_tokens=3001)), 400,
                       "max_tokens_too_large", "3000")
    assert err["param"] == "max_tokens"
    err = assert_error(post(http, chat_body(short, max_completion_tokens=5000)), 400,
                       "max_tokens_too_large")
    assert err["param"] == "max_completion_tokens"


def test_invalid_requests(http):
    short = audio_part(wav_bytes(clip(0.5)))
    assert_error(http.post("/v1/chat/completions", content=b"{not json",
                           headers={"Content-Type": "application/json"}), 400, "invalid_json")
    err = assert_error(post(http, chat_body(short, temperature=5)), 400, "invalid_value",
                       "temperature")
    assert err["param"] == "temperature"
    err = assert_error(post(http, {"model": "tiny", "messages": []}), 400, "invalid_value")
    assert err["param"] == "messages"
    assert_error(post(http, chat_body(short, model="gpt-4o")), 404, "model_not_found", "tiny")
    assert_error(post(http, chat_body(short, n=2)), 400, "unsupported_parameter", "n=1")


# ------------------------------------------------------------------------- audio_url
def url_part(url: str) -> dict:
    return {"type": "audio_url", "audio_url": {"url": url}}


def test_audio_url_reads_only_the_allowed_folders(http, folders, engine):
    allowed, outside = folders
    inside = allowed / "one second.wav"
    expected = alone(engine, decoded(inside.read_bytes()), "What do you hear?", 8)
    for url in (inside.as_uri(), str(inside), f"file://{allowed}/../{allowed.name}/one%20second.wav"):
        reply = post(http, chat_body(url_part(url), max_tokens=8))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == expected

    secret = outside / "secret.wav"
    for url in (secret.as_uri(), str(secret), f"{allowed}/../{outside.name}/secret.wav",
                str(allowed / "link.wav"), str(outside / "does-not-exist.wav"), "file:///etc/passwd"):
        err = assert_error(post(http, chat_body(url_part(url))), 403, "audio_path_not_allowed",
                           "messages[0].content[0]")
        assert err["type"] == "permission_error"
    assert_error(post(http, chat_body(url_part(str(allowed / "nope.wav")))), 400,
                 "audio_file_not_found")
    assert_error(post(http, chat_body(url_part("one second.wav"))), 400, "invalid_audio_path")
    data_url = "data:audio/wav;base64," + b64(inside.read_bytes())
    assert post(http, chat_body(url_part(data_url), max_tokens=8)).json()["choices"][0][
        "message"]["content"] == expected


def test_audio_url_never_fetches_over_the_network(http):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for url in (f"http://127.0.0.1:{port}/a.wav", f"https://127.0.0.1:{port}/a.wav",
                    f"ftp://127.0.0.1:{port}/a.wav", f"file://127.0.0.1:{port}/a.wav"):
            assert_error(post(http, chat_body(url_part(url))), 400, "unsupported_url")
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_audio_url_is_off_by_default(strict, folders):
    inside = folders[0] / "one second.wav"
    with httpx.Client(base_url=strict.url, timeout=30) as client:
        assert client.get("/health").json()["limits"]["audio_url_files"] is False
        assert_error(post(client, chat_body(url_part(inside.as_uri()))), 400,
                     "audio_url_disabled", "--allow-audio-dir")


# ----------------------------------------------------------------- queue and timeout
def test_queue_full_is_429_and_timeout_is_504(strict, http):
    slow = chat_body(audio_part(wav_bytes(clip(1.0))), max_tokens=1200, ignore_eos=True)
    outcome: dict = {}
    # The slow request is held at its first token until the server aborts it: it cannot
    # finish before its 0.5 s timeout, however fast the machine.
    probe = strict.probe.reset(hold_until_abort=True)

    def run_slow() -> None:
        with httpx.Client(base_url=strict.url, timeout=60) as client:
            outcome["response"] = post(client, slow)

    with httpx.Client(base_url=strict.url, timeout=30) as client:
        worker = threading.Thread(target=run_slow)
        worker.start()
        wait_until(lambda: client.get("/health").json()["in_flight"] == 1)
        assert_error(post(client, chat_body(audio_part(wav_bytes(clip(0.5))))), 429,
                     "queue_full", "--max-queue")
        worker.join()
        err = assert_error(outcome["response"], 504, "request_timeout", "0.5 s")
        assert err["type"] == "timeout_error"
        # The timed-out request was aborted in the engine, inside its batch...
        (future,) = probe.futures()
        assert future.result(timeout=60).finish_reason == "abort"
        # ...and its slot is free once the engine let it go.
        wait_until(lambda: client.get("/health").json()["in_flight"] == 0)
    probe.reset()
    # That work poisoned nothing: the next request is answered normally.
    reply = post(http, chat_body(audio_part(wav_bytes(clip(1.0))), max_tokens=8))
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] >= 1


# ----------------------------------------------------------------------- command line
def test_serve_command_starts_a_server(tiny_checkpoint):
    port = free_port()
    # The key comes from the environment; the engine budgets use the new and an old name.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MIDASHENGLM_API_KEY": "cli-secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "midashenglm.cli", "serve", "--model", str(tiny_checkpoint),
         "--port", str(port), "--device", "cpu", "--log-level", "warning",
         "--max-num-seqs", "4", "--max-batch-tokens", "8192"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        assert httpx.get(f"{url}/health").json()["api_key_required"] is True
        assert_error(httpx.get(f"{url}/v1/models"), 401, "invalid_api_key")
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer cli-secret"})
        assert models.json()["data"][0]["id"] == tiny_checkpoint.name
        page = httpx.get(url)
        assert page.status_code == 200 and "<canvas" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_command_rejects_bad_options_before_loading(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "midashenglm.cli", "serve", "--model", str(tmp_path),
         "--allow-audio-dir", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and "--allow-audio-dir" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("options", "message"), [
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--max-batch-tokens", "0"], "--max-kv-cache-tokens"),  # the old name of the option
    (["--max-batch-audio-seconds", "-1"], "--max-batch-audio-seconds"),
    (["--api-key", " spaced "], "API key"),
])
def test_serve_command_checks_engine_and_key_options(tmp_path, monkeypatch, options, message):
    from typer.testing import CliRunner

    from midashenglm.cli import app

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(Engine, "from_pretrained", no_loading)
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), *options])
    assert isinstance(result.exception, (ValueError, UserError)), result.output
    assert message in str(result.exception)


def test_serve_engine_options_are_the_engine_config_fields(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from midashenglm.cli import app
    from midashenglm.inference import EngineConfig

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--max-num-seqs", "--max-kv-cache-tokens", "--max-batch-audio-seconds",
                   "--api-key", "MIDASHENGLM_API_KEY"):
        assert option in result.output

    seen = {}

    def fake_load(model, *, device, dtype, config):
        seen["config"] = config
        raise UserError("stop here")

    monkeypatch.setattr(Engine, "from_pretrained", fake_load)
    CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--max-num-seqs", "3",
                             "--max-kv-cache-tokens", "5000", "--max-batch-audio-seconds", "70"])
    assert seen["config"] == EngineConfig(max_num_seqs=3, max_kv_cache_tokens=5000,
                                          max_batch_audio_seconds=70.0)
    CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--max-batch-size", "5",
                             "--max-batch-tokens", "6000"])  # the old names still work
    assert seen["config"] == EngineConfig(max_num_seqs=5, max_kv_cache_tokens=6000)
