"""The per-event checks of a relayed stream: where an SSE event ends, and what the OpenAI
stream scan picks out (terminator, usage, in-stream errors), however the vendor's bytes
are cut into reads."""

from __future__ import annotations

import pytest

from proxy.vendors.http import _event_ends
from proxy.vendors.openai_compat import _SSEScan

CONTENT = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}\n\n'
)
USAGE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}\n\n'
)
ERROR = b'data: {"error":{"message":"overloaded","type":"server_error","code":null}}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"\r"])
def test_an_event_ends_at_a_blank_line_whatever_the_line_ending(sep: bytes) -> None:
    event = b"data: {}" + sep + sep
    assert _event_ends(b"", event)
    assert not _event_ends(b"", b"data: {}" + sep)
    # The blank line split across two reads still ends the event.
    for cut in range(1, len(event)):
        assert _event_ends(event[:cut], event[cut:]) or _event_ends(b"", event[:cut]), cut


def _scan(pieces: list[bytes]) -> _SSEScan:
    scan = _SSEScan()
    for piece in pieces:
        scan.feed(piece)
    return scan


def test_usage_error_and_terminator_are_found_wherever_the_reads_are_cut() -> None:
    stream = CONTENT + USAGE + DONE
    for cut in range(1, len(stream)):
        scan = _scan([stream[:cut], stream[cut:]])
        assert scan.usage is not None and (scan.usage.prompt, scan.usage.completion) == (11, 7)
        assert scan.done and scan.error is None, cut
    failing = CONTENT + ERROR
    for cut in range(1, len(failing)):
        scan = _scan([failing[:cut], failing[cut:]])
        assert scan.error is not None and b"overloaded" in scan.error, cut
        assert not scan.done


def test_a_stream_read_a_byte_at_a_time_is_scanned_the_same() -> None:
    stream = CONTENT + USAGE + DONE
    scan = _scan([stream[i : i + 1] for i in range(len(stream))])
    assert scan.usage is not None and scan.usage.completion == 7
    assert scan.done


def test_null_usage_and_the_text_done_are_not_taken_for_the_real_thing() -> None:
    mention = (
        b'data: {"choices":[{"index":0,"delta":{"content":"say [DONE] and \\"usage\\": {"}}],'
        b'"usage":null}\n\n'
    )
    scan = _scan([CONTENT, mention, CONTENT])
    assert not scan.done
    assert scan.usage is None and scan.error is None
    assert _scan([CONTENT, b"data:[DONE]\n\n"]).done  # no space after the colon is valid SSE
