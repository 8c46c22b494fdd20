"""``midashenglm.inference.client``: the HTTP client builds its messages with
``midashenglm.conversation`` like local inference, so against this server it gets what the
engine answers locally for the same conversation."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from midashenglm.audio import load_audio
from midashenglm.conversation import build_conversation
from midashenglm.inference import Request, SamplingParams
from midashenglm.inference.client import EndpointClient, openai_messages, wav_bytes
from midashenglm.serve.app import ServeConfig, create_app
from tests.conftest import clip
from tests.serve_helpers import ServerThread

KEY = "client-key"


@pytest.fixture(scope="module")
def server(engine):
    config = ServeConfig(served_model_name="tiny", api_key=KEY)
    with ServerThread(create_app(engine, config)) as srv:
        yield srv


def test_openai_messages_keep_the_conversation():
    wave = clip(0.5)
    messages = openai_messages(build_conversation(wave, "What is it?", system_prompt="Be brief.",
                                                  sampling_rate=16000))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "Be brief."
    audio, text = messages[1]["content"]
    assert text == {"type": "text", "text": "What is it?"}
    assert audio["type"] == "input_audio" and audio["input_audio"]["format"] == "wav"
    sent = load_audio(base64.b64decode(audio["input_audio"]["data"]))
    assert len(sent) == len(wave) and np.abs(sent - wave).max() < 1e-4
    # A clip at another rate is resampled to 16 kHz before it is sent.
    other = openai_messages(build_conversation(clip(0.5, sample_rate=8000), "q",
                                               sampling_rate=8000))
    data = other[0]["content"][0]["input_audio"]["data"]
    assert len(load_audio(base64.b64decode(data))) == 8000


def test_the_client_gets_what_the_engine_answers_locally(server, engine, tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(clip(1.5, seed=4)))
    question, system = "Describe the sound", "You are a helpful language and speech assistant."
    client = EndpointClient(f"{server.url}/v1", api_key=KEY, max_retries=0)
    answer = client.ask(path, question, system_prompt=system,
                        sampling=SamplingParams(max_new_tokens=12))

    # Locally: the same conversation builder, with the audio the client sent.
    sent = load_audio(wav_bytes(load_audio(path)))
    local = engine.generate([Request(build_conversation(sent, question, system_prompt=system,
                                                        sampling_rate=16000),
                                     SamplingParams(max_new_tokens=12))])[0]
    assert answer.text == local.text
    assert answer.prompt_tokens == local.prompt_tokens
    assert answer.completion_tokens == local.completion_tokens
    assert answer.audio_seconds == pytest.approx(1.5)
