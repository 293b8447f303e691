"""Both lanes apply one set of rules: generated requests get the same verdict on the fast lane
and on a connection aiohttp serves.

Hypothesis builds request heads from the parts attackers play with (control and non-ASCII
bytes in names and values, odd Content-Length spellings, missing or doubled Host, a
Transfer-Encoding beside a length, Connection token lists) and sends each twice over raw
sockets: once as a connection's first request (the fast lane's to serve or hand over), once
after a request that hands the connection to aiohttp. The verdicts (accepted, refused with a
4xx, closed without an answer, or still waiting for the body the head announced) must be equal, and never a 5xx.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import hypothesis
import orjson
import pytest
from hypothesis import strategies as st

from tests.test_openapi_schemathesis import _Background

BODY = orjson.dumps({"model": "smart", "messages": [{"role": "user", "content": "hi"}]})
HANDED_OVER = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"

SETTINGS = hypothesis.settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = _Background()
    server.start()
    yield server.port
    server.stop()


def _read_answer(sock: socket.socket) -> int:
    """The status of the next answer, reading it whole; 0 if the connection closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(rest) < need:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    else:  # chunked: read to the terminating chunk
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status


def _verdict(port: int, data: bytes, *, handed_over: bool) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if handed_over:
            sock.sendall(HANDED_OVER)
            assert _read_answer(sock) == 200
        sock.settimeout(1.5)  # a request that says more body follows is waited for
        try:
            sock.sendall(data)
            status = _read_answer(sock)
        except (ConnectionResetError, BrokenPipeError):
            status = 0
        except TimeoutError:
            return "waiting"
    if status == 0:
        return "closed"
    if status >= 500:
        return f"server error {status}"
    return "accepted" if status < 400 else "refused"


_TRICKY = st.sampled_from(
    [b"\x00", b"\x01", b"\x1b", b"\x7f", b"\x80", b"\xe2\x82\xac", b" ", b"\t", b",", b":", b"a"]
)
_PLAIN = st.sampled_from([b"v", b"1", b"x-y", b"text/plain"])
_VALUE = st.one_of(_PLAIN, st.lists(st.one_of(_TRICKY, _PLAIN), max_size=6).map(b"".join))
_NAME = st.one_of(
    st.sampled_from([b"X-Probe", b"X-A", b"Accept", b"User-Agent"]),
    st.lists(_TRICKY, min_size=1, max_size=3).map(lambda parts: b"X" + b"".join(parts)),
)
_LENGTH = st.sampled_from(
    ["{n}", "{n}", "{n}", "{n}", "+{n}", "0x{n:x}", " {n}", "{n} ", "{n}, {n}", "{n}\r\nContent-Length: {n}",
     "{n}\r\nContent-Length: 1", "-{n}", "{n}0", "", None]
)  # fmt: skip
_HOST = st.sampled_from(
    [b"Host: localhost\r\n"] * 3 + [b"", b"Host: a\r\nHost: b\r\n", b"Host: \r\n"]
)
_EXTRA = st.sampled_from(
    [b"", b"Transfer-Encoding: chunked\r\n", b"Connection: keep-alive, x-close-me\r\n",
     b"Connection: close\r\n", b"Expect: 100-continue\r\n"]
)  # fmt: skip


@SETTINGS
@hypothesis.given(
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=3),
    length=_LENGTH,
    host=_HOST,
    extra=_EXTRA,
)
def test_both_lanes_give_the_same_verdict(
    port: int,
    headers: list[tuple[bytes, bytes]],
    length: str | None,
    host: bytes,
    extra: bytes,
) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\n" + host
    head += b"Content-Type: application/json\r\n"
    if length is not None:
        head += b"Content-Length: " + length.format(n=len(BODY)).encode() + b"\r\n"
    for name, value in headers:
        head += name + b": " + value + b"\r\n"
    if extra.startswith(b"Transfer-Encoding") and length is None:
        data = head + extra + b"\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    else:
        data = head + extra + b"\r\n" + BODY
    fast = _verdict(port, data, handed_over=False)
    aiohttp = _verdict(port, data, handed_over=True)
    assert not fast.startswith("server error"), (fast, data)
    assert fast == aiohttp, (fast, aiohttp, data)
