"""Request timeouts of the MONAI Label server (issue 15, finding 8): uvicorn has none for a slow request.

An in-process uvicorn server with a small ASGI app behind :class:`GuardMiddleware`: a connection that never
finishes its request head is closed, a body that stops short is answered 408, and neither limit touches a
client that sends its request in time, however long the answer takes.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time

import pytest

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn comes with the MONAI Label extra: pip install -e \".[label]\"")

from cxrkit.label import timeouts  # noqa: E402
from cxrkit.serve.guard import GuardMiddleware, body_deadline  # noqa: E402

DEADLINE_S = 1.0
SOCKET_TIMEOUT_S = 20.0  # a hang fails the test through socket.timeout


async def _app(scope, receive, send):
    """Echo the body's length; ``/slow`` answers after longer than the deadline."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(DEADLINE_S * 2)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _failing_like_starlette(scope, receive, send):
    """What Starlette's ServerErrorMiddleware does with an exception: answer 500, then raise it again."""
    try:
        await _app(scope, receive, send)
    except Exception:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"Internal Server Error"})
        raise


@pytest.fixture(scope="module")
def server():
    """uvicorn on a free loopback port with the request timeouts installed; yields the port."""
    patched = timeouts.install(DEADLINE_S)
    assert "H11Protocol" in patched
    app = GuardMiddleware(_failing_like_starlette, body_timeout=DEADLINE_S)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http="h11", log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(10)
        timeouts.install(timeouts.DEFAULT_TIMEOUT)


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_a_request_head_that_never_ends_is_closed(server):
    assert _exchange(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n") == b""
    with socket.create_connection(("127.0.0.1", server), timeout=SOCKET_TIMEOUT_S) as sock:
        assert sock.recv(1) == b""  # connected, sent nothing: closed too


def test_a_body_that_stops_short_is_answered_408_not_500(server):
    answer = _exchange(server, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
    assert b"Internal Server Error" not in answer


def test_requests_sent_in_time_are_answered_however_long_the_answer_takes(server):
    body = b"y" * 50
    answer = _exchange(server, b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                               b"Content-Length: 50\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"50")
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=SOCKET_TIMEOUT_S)  # keep-alive
    try:
        for _ in range(2):
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b"0"
    finally:
        connection.close()


def test_body_deadline_passes_messages_after_the_body_through():
    messages = [{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.request", "body": b"b"}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(DEADLINE_S * 2)  # waiting for a disconnect during a long answer: no deadline
        return {"type": "http.disconnect"}

    async def run():
        timed = body_deadline(receive, DEADLINE_S / 2)
        return [await timed(), await timed(), await timed()]

    assert [m["type"] for m in asyncio.run(run())] == ["http.request", "http.request", "http.disconnect"]


def test_the_timeout_comes_from_the_environment_and_is_checked():
    assert timeouts.timeout_from_env({}) == timeouts.DEFAULT_TIMEOUT
    assert timeouts.timeout_from_env({timeouts.TIMEOUT_ENV: "2.5"}) == 2.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="CXRKIT_LABEL_REQUEST_TIMEOUT must be a number of seconds > 0"):
            timeouts.timeout_from_env({timeouts.TIMEOUT_ENV: bad})
