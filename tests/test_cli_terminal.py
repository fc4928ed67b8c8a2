"""What the CLI prints from documents and the server cannot drive the terminal."""

from __future__ import annotations

import pytest

from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli import render
from rag_cli.terminal import echo, printable

# A control character or sequence of each kind, and what must be left of "a<it>b".
HOSTILE = {
    "CSI colour": ("\x1b[31m", "ab"),
    "CSI clear screen": ("\x1b[2J\x1b[H", "ab"),
    "OSC window title, BEL": ("\x1b]0;owned\x07", "ab"),
    "OSC hyperlink, ST": ("\x1b]8;;https://evil.example\x1b\\", "ab"),
    "DCS string": ("\x1bP1$r0m\x1b\\", "ab"),
    "two-character sequence": ("\x1bc", "ab"),
    "carriage return": ("\r", "ab"),
    "backspace": ("\b\b", "ab"),
    "NUL and BEL": ("\x00\x07", "ab"),
    "DEL": ("\x7f", "ab"),
    "C1 CSI": ("\x9b31m", "a31mb"),
    "C1 NEL": ("\x85", "ab"),
    "newline and tab stay": ("\n\t", "a\n\tb"),
    "text stays": ("é ✓ 漢", "aé ✓ 漢b"),
}


@pytest.mark.parametrize(("hostile", "expected"), HOSTILE.values(), ids=HOSTILE.keys())
def test_printable_removes_controls_and_escape_sequences(hostile: str, expected: str) -> None:
    assert printable(f"a{hostile}b") == expected


def test_a_lone_escape_at_the_end_is_removed() -> None:
    # A streamed answer can end one piece on ESC and start the next with "[31m".
    assert printable("answer\x1b") + printable("[31m") == "answer[31m"


def test_an_answer_and_its_sources_print_without_controls(capsys: pytest.CaptureFixture[str]) -> None:
    hit = retriever_pb2.SearchHit(
        document_id="runbook\x1b[8m.md",
        chunk_index=0,
        title="Backups\r\x1b[2KFAKE TITLE",
        text="Base backups run at 02:00 UTC.\x1b]0;owned\x07",
        score=0.9,
    )
    response = gateway_pb2.AskResponse(
        answer="They run at \x1b[31m02:00 UTC\x1b[0m [1].\rForget that.",
        sources=[gateway_pb2.Source(number=1, hit=hit, cited=True)],
    )

    echo(render.answer(response))
    echo(f"error: INVALID_ARGUMENT: {hit.title}", error=True)

    out, err = capsys.readouterr()
    assert "They run at 02:00 UTC [1].Forget that." in out
    assert "[1] runbook.md#0 — BackupsFAKE TITLE" in out
    assert "Base backups run at 02:00 UTC." in out
    assert err == "error: INVALID_ARGUMENT: BackupsFAKE TITLE\n"
    for control in ("\x1b", "\r", "\x07"):
        assert control not in out + err
