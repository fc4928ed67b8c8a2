"""Everything the CLI prints goes through echo(), which makes it safe for a terminal.

Titles, snippets, answers, document ids, key entries and error details come from
documents, files and the server: a document can hold escape sequences that move
the cursor, rewrite earlier lines (a carriage return), set the window title or
hide text. printable() removes every escape sequence whole and every other
control character (C0, DEL, C1), keeping only newlines and tabs, so what is
shown is what the text says.
"""

from __future__ import annotations

import re
import sys

# ESC followed by: a CSI sequence (parameters, intermediates, final byte); an OSC,
# DCS, SOS, PM or APC string up to its terminator (BEL or ESC \) or the end; or any
# one character (two-character sequences). A lone ESC at the end matches too.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|.)?",
    re.DOTALL,
)
# C0 but newline and tab, DEL, and C1 (whose CSI, U+009B, starts sequences on some terminals).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """text without escape sequences and control characters other than newline and tab."""
    return _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))


def echo(text: str = "", *, error: bool = False, end: str = "\n", flush: bool = False) -> None:
    """Prints printable(text) to stdout, or to stderr for an error or a warning."""
    print(printable(text), end=end, file=sys.stderr if error else sys.stdout, flush=flush)
