"""The one reader of Ollama's NDJSON lines (chat and pull streams), fed received chunks as they come:
lines split across chunks, several in one, an ``error`` line, a line that is not Ollama's, the
unterminated last line and a body cut short, each in Minato's sentence."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from minato.ollama.wire import ChatChunk, PullProgress
from minato.upstream.lines import LineReader
from minato.upstream.streams import ChunkStream, PullStream
from tests.support.payloads import chat_done, chat_token, ndjson

URL = "http://127.0.0.1:11434"


def chat() -> LineReader[ChatChunk]:
    return ChunkStream.reader(URL)


def pull() -> LineReader[PullProgress]:
    return PullStream.reader(URL)


def tokens(batch: list[ChatChunk]) -> list[str]:
    return [chunk.message.content for chunk in batch]


def test_a_line_split_across_chunks_is_decoded_once_its_end_arrives() -> None:
    reader = chat()
    line = ndjson(chat_token("Hello"))

    assert reader.feed(line[:7]) == []
    assert reader.feed(line[7:20]) == []  # no newline yet: carried on
    assert tokens(reader.feed(line[20:])) == ["Hello"]
    assert reader.failure is None


def test_the_start_of_the_next_line_is_carried_past_a_complete_one() -> None:
    reader = chat()
    first, second = ndjson(chat_token("a")), ndjson(chat_token("b"))

    assert tokens(reader.feed(first + second[:10])) == ["a"]
    assert tokens(reader.feed(second[10:])) == ["b"]


def test_several_lines_in_one_chunk_are_one_batch() -> None:
    reader = chat()

    batch = reader.feed(ndjson(chat_token("a"), chat_token("b"), chat_done(eval_count=2)))

    assert tokens(batch) == ["a", "b", ""]
    assert batch[-1].done
    assert reader.failure is None


def test_blank_lines_decode_to_nothing_and_are_no_failure() -> None:
    reader = chat()

    assert reader.feed(b"\n\n") == []
    assert reader.failure is None


def test_an_error_line_mid_batch_ends_the_stream_after_the_lines_before_it() -> None:
    reader = chat()
    chunk = ndjson(chat_token("a"), chat_token("b"), {"error": "runner crashed"}, chat_token("c"))

    batch = reader.feed(chunk)

    assert tokens(batch) == ["a", "b"], "the lines before the error still count; the ones after it do not"
    assert reader.failure is not None
    assert reader.failure.detail == "Ollama failed mid-stream: runner crashed"
    assert reader.failure.status_code == 502
    assert reader.error == "runner crashed"
    assert not reader.cut_short


def test_an_error_line_first_in_its_batch_leaves_nothing() -> None:
    reader = chat()

    assert reader.feed(ndjson({"error": "out of memory"})) == []
    assert reader.error == "out of memory"
    assert reader.failure is not None
    assert reader.failure.detail == "Ollama failed mid-stream: out of memory"


@pytest.mark.parametrize(
    ("line", "sentence"),
    [
        pytest.param(b"<html>proxy error</html>\n", "Ollama sent a line that is not valid JSON", id="not-json"),
        pytest.param(
            b'{"message": {"content": 3}, "done": false}\n',
            "Ollama sent a line that does not have the shape of Ollama's API",
            id="wrong-shape",
        ),
    ],
)
def test_a_line_that_is_not_ollamas_is_told_in_minatos_words_msgspecs_logged(line: bytes, sentence: str) -> None:
    reader = chat()

    with capture_logs() as events:
        batch = reader.feed(ndjson(chat_token("a")) + line)

    assert batch == [], "a batch that does not decode is not handed on in part"
    assert reader.failure is not None
    assert reader.failure.detail == sentence
    assert reader.error is None
    (logged,) = [event for event in events if event["event"] == "ollama_line_unreadable"]
    assert logged["ollama_url"] == URL
    assert logged["error"].startswith(("DecodeError: ", "ValidationError: "))
    assert "proxy error" not in reader.failure.detail


def test_the_unterminated_last_line_is_decoded_at_the_end() -> None:
    reader = chat()
    last = ndjson(chat_done(eval_count=1)).rstrip(b"\n")

    assert tokens(reader.feed(ndjson(chat_token("a")) + last[:15])) == ["a"]
    assert reader.feed(last[15:]) == []
    batch = reader.end()

    assert len(batch) == 1
    assert batch[0].done
    assert batch[0].eval_count == 1
    assert reader.failure is None, "the last line came: the stream is complete"


def test_a_body_that_ends_before_the_last_line_is_cut_short() -> None:
    reader = chat()
    assert tokens(reader.feed(ndjson(chat_token("a")))) == ["a"]

    assert reader.end() == []
    assert reader.cut_short
    assert reader.failure is not None
    assert reader.failure.detail == "Ollama closed the stream before it was done"
    assert reader.error is None


def test_an_unterminated_token_at_the_end_is_handed_on_and_the_stream_is_cut_short() -> None:
    reader = chat()
    assert reader.feed(b"  " + ndjson(chat_token("a")).rstrip(b"\n") + b" ") == []

    assert tokens(reader.end()) == ["a"]
    assert reader.cut_short
    assert reader.failure is not None
    assert reader.failure.detail == "Ollama closed the stream before it was done"


def test_an_unterminated_error_line_at_the_end_is_the_failure_not_the_cut() -> None:
    reader = chat()
    reader.feed(b'{"error": "runner crashed"}')

    assert reader.end() == []
    assert not reader.cut_short
    assert reader.failure is not None
    assert reader.failure.detail == "Ollama failed mid-stream: runner crashed"


def test_an_unterminated_line_that_is_not_json_at_the_end_is_the_failure_not_the_cut() -> None:
    reader = chat()
    reader.feed(b"{not json")

    with capture_logs():
        assert reader.end() == []
    assert not reader.cut_short
    assert reader.failure is not None
    assert reader.failure.detail == "Ollama sent a line that is not valid JSON"


def test_a_pull_reader_has_the_pulls_sentences_and_last_line() -> None:
    failing = pull()
    batch = failing.feed(ndjson({"status": "pulling manifest"}, {"error": "disk full"}))
    assert [item.status for item in batch] == ["pulling manifest"]
    assert failing.failure is not None
    assert failing.failure.detail == "pull failed: disk full"

    cut = pull()
    cut.feed(ndjson({"status": "pulling manifest"}, {"status": "pulling abc", "total": 9, "completed": 3}))
    assert cut.end() == []
    assert cut.failure is not None
    assert cut.failure.detail == "Ollama closed the pull stream before it succeeded"

    done = pull()
    done.feed(b'{"status": "pulling manifest"}\n{"status": "success"}')
    assert [item.status for item in done.end()] == ["success"]
    assert done.failure is None
