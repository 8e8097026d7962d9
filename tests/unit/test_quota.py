"""Token frames counted as they pass, however a stream is split."""

from __future__ import annotations

import pytest

from minato.web.doors.watch import StreamWatch
from minato.web.rendering import StreamDialect
from tests.support.payloads import chat_token, ndjson

pytestmark = pytest.mark.anyio


# -- every relayed token is charged --------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "frames", "relayed"),
    [
        (StreamDialect.NDJSON, ndjson(chat_token("a"), chat_token("b"), chat_token("c")), 3),
        (
            StreamDialect.OPENAI,
            b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"finish_reason":null}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{"content":"b"},"finish_reason":null}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
            2,
        ),
        (
            StreamDialect.ANTHROPIC,
            b'event: message_start\ndata: {"type":"message_start"}\n\n'
            b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"a"}}\n\n'
            b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"b"}}\n\n',
            2,
        ),
        (
            StreamDialect.RESPONSES,
            b'event: response.created\ndata: {"type":"response.created"}\n\n'
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"a"}\n\n',
            1,
        ),
    ],
    ids=["ndjson", "openai", "anthropic", "responses"],
)
def test_token_frames_are_counted_as_they_pass_even_split_anywhere(
    dialect: StreamDialect, frames: bytes, relayed: int
) -> None:
    for size in (1, 3, 7, len(frames)):
        watch = StreamWatch(dialect, strip_usage=False)
        for start in range(0, len(frames), size):
            watch.feed(frames[start : start + size])

        assert watch.relayed == relayed, size
        assert watch.counted == relayed


def test_a_stream_that_is_no_generation_counts_no_tokens() -> None:
    watch = StreamWatch(StreamDialect.NDJSON, strip_usage=False, generation=False)

    watch.feed(ndjson(chat_token("a"), {"status": "pulling manifest"}))

    assert watch.counted == 0
