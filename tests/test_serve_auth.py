"""``--api-key``: every ``/v1`` route needs ``Authorization: Bearer KEY`` (401 in OpenAI's
shape otherwise); ``/health`` and the web page stay open and say that a key is needed."""

from __future__ import annotations

import httpx
import openai
import pytest

import midashenglm.serve.app as serve_app
from midashenglm.inference import Engine
from midashenglm.serve.app import ServeConfig, create_app
from tests.conftest import clip
from tests.serve_helpers import ServerThread, audio_part, b64, chat_body, wav_bytes

KEY = "sk-test-0123456789"
GOOD = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with Engine.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32") as engine:
        config = ServeConfig(served_model_name="tiny", max_queue=1, api_key=KEY)
        with ServerThread(create_app(engine, config)) as srv:
            yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert KEY not in response.text


BAD_HEADERS = {
    "no header": {},
    "wrong key": {"Authorization": "Bearer sk-test-wrong"},
    "key as a prefix": {"Authorization": f"Bearer {KEY}x"},
    "prefix of the key": {"Authorization": f"Bearer {KEY[:-1]}"},
    "no scheme": {"Authorization": KEY},
    "basic scheme": {"Authorization": f"Basic {KEY}"},
    "empty bearer": {"Authorization": "Bearer"},
}


@pytest.mark.parametrize("headers", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_every_v1_route_needs_the_key(http, headers):
    body = chat_body(audio_part(wav_bytes(clip(0.5))), max_tokens=4)
    assert_401(http.get("/v1/models", headers=headers))
    assert_401(http.get("/v1/models/tiny", headers=headers))
    assert_401(http.post("/v1/chat/completions", json=body, headers=headers))
    assert_401(http.post("/v1/chat/completions", json={**body, "stream": True}, headers=headers))
    assert_401(http.get("/v1/nothing", headers=headers))  # unknown routes say nothing either


def test_the_right_key_works_and_the_page_and_health_stay_open(http):
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["api_key_required"] is True
    page = http.get("/")
    assert page.status_code == 200 and 'id="api-key"' in page.text
    assert http.get("/static/app.js").status_code == 200
    assert http.get("/v1/models", headers=GOOD).json()["data"][0]["id"] == "tiny"
    lower = {"Authorization": f"bearer {KEY}"}  # the scheme is case-insensitive
    assert http.get("/v1/models", headers=lower).status_code == 200
    body = chat_body(audio_part(wav_bytes(clip(0.5))), max_tokens=4)
    reply = http.post("/v1/chat/completions", json=body, headers=GOOD)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1


def test_unauthenticated_requests_take_no_queue_slot(http):
    """With --max-queue 1, refused requests never hold the one slot."""
    body = chat_body(audio_part(wav_bytes(clip(0.5))), max_tokens=2)
    for _ in range(3):
        assert_401(http.post("/v1/chat/completions", json=body))
    assert http.get("/health").json()["in_flight"] == 0
    assert http.post("/v1/chat/completions", json=body, headers=GOOD).status_code == 200


def test_the_key_is_compared_in_constant_time(http, monkeypatch):
    calls = []
    real = serve_app.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(serve_app.hmac, "compare_digest", spy)
    assert_401(http.get("/v1/models", headers={"Authorization": "Bearer nope"}))
    assert http.get("/v1/models", headers=GOOD).status_code == 200
    assert calls == [(b"nope", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_the_openai_client(server):
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64(wav_bytes(clip(0.6))), "format": "wav"}},
        {"type": "text", "text": "What is it?"}]}]
    for key in ("wrong", None):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "EMPTY", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    assert reply.choices[0].message.content is not None
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=4,
                                                 stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_the_config_refuses_a_blank_key():
    for bad in ("", "  ", " key"):
        with pytest.raises(ValueError, match="API key"):
            ServeConfig(served_model_name="tiny", api_key=bad)
    assert "secret" not in repr(ServeConfig(served_model_name="tiny", api_key="secret"))
