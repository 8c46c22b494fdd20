"""Cancellation: a client that goes away, or a request that times out, is aborted in the
engine (its row leaves the batch at the next step), streaming or not.

No sleeps: an :class:`EngineProbe` holds the request's first token in the engine's worker
until the server has called ``engine.abort``, so the request is certainly inside a running
batch when it is aborted, and the test then reads its ``Result``.
"""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from midashenglm.serve.app import ServeConfig, create_app
from tests.conftest import clip
from tests.serve_helpers import (
    EngineProbe,
    ServerThread,
    audio_part,
    chat_body,
    wait_until,
    wav_bytes,
)

MAX_TOKENS = 1500


@pytest.fixture
def serve(engine):
    """``serve(**config)`` -> (probe, server): an app over a probe that holds every first
    token until the server aborts something."""
    with_servers = []

    def start(**options):
        probe = EngineProbe(engine)
        probe.gate = probe.abort_called
        config = ServeConfig(**{"served_model_name": "tiny", "max_tokens_limit": MAX_TOKENS,
                                "request_timeout": 120, **options})
        server = ServerThread(create_app(probe, config)).__enter__()
        with_servers.append(server)
        return probe, server

    yield start
    for server in with_servers:
        server.__exit__(None, None, None)


def slow_body(**options):
    return chat_body(audio_part(wav_bytes(clip(1.0))), max_tokens=MAX_TOKENS, ignore_eos=True,
                     **options)


def aborted_result(probe):
    """The one request's Result, once the engine let it go: it must have been aborted."""
    assert probe.abort_called.wait(60), "the server never aborted the request"
    (future,) = probe.futures()
    result = future.result(timeout=60)
    assert result.finish_reason == "abort", result
    assert result.completion_tokens < MAX_TOKENS
    assert probe.aborted == [result.request_id]
    return result


def in_flight(server) -> int:
    return httpx.get(f"{server.url}/health", timeout=30).json()["in_flight"]


def test_streaming_client_that_disconnects_is_aborted(serve, engine):
    probe, server = serve()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=slow_body(stream=True)) as response:
            assert response.status_code == 200
            first = next(response.iter_lines())
            assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
        # Leaving the block closed the connection after the first chunk.
    result = aborted_result(probe)
    assert result.completion_tokens <= 2  # held at its first token until the abort
    wait_until(lambda: in_flight(server) == 0, what="the slot to be freed")


def test_non_streaming_client_that_disconnects_is_aborted(serve):
    probe, server = serve()
    payload = json.dumps(slow_body()).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        # The request is generating (held at its first token): now the client goes away.
        assert probe.first_token.wait(60), "the request never produced a token"
    aborted_result(probe)
    wait_until(lambda: in_flight(server) == 0, what="the slot to be freed")


def test_timeout_aborts_a_running_request(serve):
    probe, server = serve(request_timeout=1.0)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/v1/chat/completions", json=slow_body())
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "request_timeout"
    aborted_result(probe)
    wait_until(lambda: in_flight(server) == 0, what="the slot to be freed")


def test_streamed_timeout_aborts_and_ends_with_an_error_event(serve):
    probe, server = serve(request_timeout=1.0)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=slow_body(stream=True)) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["code"] == "request_timeout"
    aborted_result(probe)
    wait_until(lambda: in_flight(server) == 0, what="the slot to be freed")


def test_finished_requests_are_not_aborted(serve):
    probe, server = serve()
    probe.gate = None
    with httpx.Client(base_url=server.url, timeout=60) as client:
        reply = client.post("/v1/chat/completions",
                            json=chat_body(audio_part(wav_bytes(clip(0.5))), max_tokens=4))
        assert reply.status_code == 200
        with client.stream("POST", "/v1/chat/completions",
                           json=chat_body(audio_part(wav_bytes(clip(0.5))), max_tokens=4,
                                          stream=True)) as response:
            lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    reasons = [future.result(timeout=60).finish_reason for future in probe.futures()]
    assert len(reasons) == 2 and set(reasons) <= {"stop", "length"}
    assert probe.aborted == []


def test_an_aborted_row_leaves_its_batch_and_the_others_go_on(serve):
    """Two requests in one running batch; one client goes away: its row leaves, the other
    row still gets its whole answer."""
    probe, server = serve()
    release = threading.Event()
    outcome = {}

    def keep() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            outcome["reply"] = client.post(
                "/v1/chat/completions",
                json=chat_body(audio_part(wav_bytes(clip(0.7, seed=3))), max_tokens=200,
                               ignore_eos=True))

    probe.gate = release  # the first request waits at its first token...
    worker = threading.Thread(target=keep)
    worker.start()
    try:
        wait_until(lambda: probe.started == [0], what="the first request to make a token")
        probe.gate = probe.abort_called  # ...the second at its own, until it is aborted
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with client.stream("POST", "/v1/chat/completions",
                               json=slow_body(stream=True)) as response:
                assert response.status_code == 200
                wait_until(lambda: len(probe.submitted) == 2, what="the second submit")
                release.set()  # both rows now run in one batch
                wait_until(lambda: probe.started == [0, 1], what="the second request's token")
        # The stream was closed while both rows were in the batch.
    finally:
        release.set()
        worker.join(120)
    reply = outcome["reply"]
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 200
    kept, dropped = (future.result(timeout=60) for future in probe.futures())
    assert kept.finish_reason == "length" and kept.completion_tokens == 200
    assert dropped.finish_reason == "abort" and dropped.completion_tokens <= 2
    assert probe.aborted == [dropped.request_id]
