"""Everything that can be checked before the first token is checked before the response
starts: a request the server must refuse gets the same status and the same OpenAI-shaped
error body whether it streams or not. And each clip is decoded once, by the server.

The engine here has a 64-token context window (a tiny model built for this module), so a
12 s clip (60 audio tokens plus the template) is too long for it, as an 850 s clip is for a
4096-token model.
"""

from __future__ import annotations

import json

import httpx
import pytest

from midashenglm.inference import Engine, EngineConfig, PreparedRequest
from midashenglm.modeling.config import DECODER_PRESETS
from midashenglm.serve.app import ServeConfig, create_app
from tests.conftest import clip, make_model
from tests.serve_helpers import EngineProbe, ServerThread, audio_part, chat_body, wav_bytes

CONTEXT = 64


@pytest.fixture(scope="module")
def engine(processor):
    model = make_model(processor, {**DECODER_PRESETS["tiny"], "max_position_embeddings": CONTEXT})
    with Engine(model, processor, EngineConfig(max_num_seqs=4)) as eng:
        yield eng


@pytest.fixture(scope="module")
def probe(engine):
    return EngineProbe(engine)


@pytest.fixture(scope="module")
def http(probe):
    config = ServeConfig(served_model_name="small", max_audio_seconds=15, max_tokens_limit=32,
                         request_timeout=120)
    with ServerThread(create_app(probe, config)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client


def body(*parts, **options):
    return chat_body(*parts, model="small", **options)


SHORT = audio_part(wav_bytes(clip(0.5)))
REFUSED = {
    # name: (request body, status, error code)
    "context too long": (body(audio_part(wav_bytes(clip(12.0)))), 400, "context_length_exceeded"),
    "audio undecodable": (body(audio_part(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(3000))),
                          400, "invalid_audio"),
    "audio too long": (body(audio_part(wav_bytes(clip(16.0)))), 400, "audio_too_long"),
    "not base64": (body({"type": "input_audio", "input_audio": {"data": "no!", "format": "wav"}}),
                   400, "invalid_base64"),
    "wrong model name": (chat_body(SHORT, model="gpt-4o"), 404, "model_not_found"),
    "bad parameter": (body(SHORT, temperature=5), 400, "invalid_value"),
    "too many tokens": (body(SHORT, max_tokens=33), 400, "max_tokens_too_large"),
    "unsupported parameter": (body(SHORT, n=2), 400, "unsupported_parameter"),
    "unknown content part": (body({"type": "image_url", "image_url": {"url": "x"}}), 400,
                             "unsupported_content_type"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_requests_get_the_same_answer_streamed_or_not(http, probe, name):
    request, status, code = REFUSED[name]
    submitted = len(probe.submitted)
    plain = http.post("/v1/chat/completions", json={**request, "stream": False})
    with http.stream("POST", "/v1/chat/completions",
                     json={**request, "stream": True,
                           "stream_options": {"include_usage": True}}) as streamed:
        streamed.read()
    for response in (plain, streamed):
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
    assert streamed.json() == plain.json()
    error = plain.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert len(probe.submitted) == submitted, "a refused request reached the engine"


@pytest.mark.parametrize(("error", "status", "code"), [
    (ValueError("the prompt must end with text after the audio (use the chat template)"),
     400, "invalid_prompt"),
    (TypeError("expected a Request"), 400, "invalid_prompt"),
    (RuntimeError("the template engine broke"), 500, "engine_error"),
])
def test_prompt_and_template_failures_come_before_the_stream(http, probe, monkeypatch, error,
                                                            status, code):
    def refuse(request):
        raise error

    monkeypatch.setattr(probe, "prepare", refuse, raising=False)
    request = body(SHORT, max_tokens=4)
    plain = http.post("/v1/chat/completions", json=request)
    streamed = http.post("/v1/chat/completions", json={**request, "stream": True})
    assert plain.status_code == streamed.status_code == status
    assert plain.json() == streamed.json()
    assert plain.json()["error"]["code"] == code and str(error) in plain.json()["error"]["message"]


def test_context_window_error_says_what_to_do(http):
    error = http.post("/v1/chat/completions", json=REFUSED["context too long"][0]).json()["error"]
    assert error["param"] == "messages"
    assert f"context window is {CONTEXT} tokens" in error["message"]
    assert "shorten the audio" in error["message"]


def test_a_request_that_fits_still_streams(http):
    request = body(SHORT, max_tokens=8, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_each_clip_is_decoded_once_and_the_engine_gets_waveforms(http, probe, monkeypatch):
    import midashenglm.audio as audio

    decodes = []
    real = audio._decode

    def counting(*args, **kwargs):
        decodes.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(audio, "_decode", counting)
    one, two = wav_bytes(clip(0.6, seed=1)), wav_bytes(clip(0.8, seed=2))
    for stream in (False, True):
        decodes.clear()
        request = body(audio_part(one), audio_part(two), max_tokens=4, stream=stream)
        with http.stream("POST", "/v1/chat/completions", json=request) as response:
            response.read()
        assert response.status_code == 200, response.text
        assert len(decodes) == 2, "each clip must be decoded exactly once"
        prepared, future = probe.submitted[-1]
        future.result(timeout=60)
        assert len(decodes) == 2, "the engine decoded a clip again"
        # The engine got a prepared request whose audio parts hold 16 kHz waveforms.
        assert isinstance(prepared, PreparedRequest)
        parts = [part for part in prepared.request.conversation[0]["content"]
                 if part["type"] == "audio"]
        assert [part["sampling_rate"] for part in parts] == [16000, 16000]
        assert [len(part["audio"]) for part in parts] == [9600, 12800]
