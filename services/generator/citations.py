"""Finds the [n] citation markers in a model's answer and checks them against the sources.

Accepted marker forms: [1], [1, 3], [1; 3], [1-3] / [1–3] (ranges) and runs such as
[1][2] or [1] [2]. A marker number that names no source is removed from the text and
reported, so a caller never shows a citation that leads nowhere.

Markers inside Markdown code (`...` spans and ``` fences) are left alone: `items[0]`
in a code sample is an index, not a citation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from services.generator.sources import Citation, Source

# Missing numbers of a range wider than this are not listed one by one (only its ends):
# a model writing [1-1000000000] must not make us build a billion-item list.
MAX_RANGE_SPAN = 100

_NUMBER_LIST = r"\d+(?:\s*[-–—]\s*\d+)?(?:\s*[,;]\s*\d+(?:\s*[-–—]\s*\d+)?)*"
_MARKER = rf"\[\s*{_NUMBER_LIST}\s*\]"
_CODE = r"```[\s\S]*?(?:```|\Z)|`[^`\n]*`"
# One pass over the text: code is matched first and kept as is; otherwise a run of
# adjacent markers with the horizontal whitespace around it. The look-behind makes a
# whitespace run match only from its start, which keeps the scan linear.
_TOKEN = re.compile(
    rf"(?P<code>{_CODE})"
    rf"|(?<![ \t])(?P<lead>[ \t]*)(?P<run>{_MARKER}(?:[ \t]*{_MARKER})*)(?P<trail>[ \t]*)"
)
_SINGLE_MARKER = re.compile(_MARKER)
_ITEM = re.compile(r"(\d+)(?:\s*[-–—]\s*(\d+))?")
# After these, a removed marker leaves no space behind: "nightly [9]." -> "nightly."
_CLOSING = frozenset(".,;:!?)]}\n")


def resolve_citations(text: str, sources: Sequence[Source]) -> tuple[str, list[Citation], list[int]]:
    """Returns (text without markers that point nowhere, citations, invalid numbers).

    Citations come in order of first appearance, one per source (quote left empty);
    invalid numbers are sorted and unique. Markers whose numbers are all valid are left
    exactly as written; the result is stripped of leading and trailing whitespace.
    """
    by_number = {source.number: source for source in sources}
    cited: dict[int, Citation] = {}
    invalid: set[int] = set()

    def rewrite(marker: str) -> str:
        """The marker as it should read: unchanged, without its bad numbers, or ""."""
        valid, bad = _parse_marker(marker, by_number)
        invalid.update(bad)
        for number in valid:
            source = by_number[number]
            cited.setdefault(number, Citation(number, source.document_id, source.chunk_index, quote=""))
        if not bad:
            return marker
        return f"[{', '.join(map(str, valid))}]" if valid else ""

    def replace(match: re.Match[str]) -> str:
        if match["code"] is not None:
            return match[0]
        markers = _SINGLE_MARKER.findall(match["run"])
        kept = [rewritten for rewritten in map(rewrite, markers) if rewritten]
        if kept == markers:
            return match[0]
        if kept:
            return match["lead"] + "".join(kept) + match["trail"]
        return _gap(match)

    return _TOKEN.sub(replace, text).strip(), list(cited.values()), sorted(invalid)


def _parse_marker(marker: str, by_number: Mapping[int, Source]) -> tuple[list[int], list[int]]:
    """Splits the numbers of one [..] marker into (valid in order, invalid)."""
    valid: list[int] = []
    invalid: list[int] = []
    for first, last in _ITEM.findall(marker):
        low, high = sorted((int(first), int(last or first)))
        named = [number for number in sorted(by_number) if low <= number <= high]
        valid.extend(number for number in named if number not in valid)
        if high - low > MAX_RANGE_SPAN:
            # Too wide to list every missing number: report the ends that name no source.
            invalid.extend(number for number in {low, high} if number not in by_number)
        else:
            invalid.extend(number for number in range(low, high + 1) if number not in by_number)
    return valid, invalid


def _gap(match: re.Match[str]) -> str:
    """What replaces a run of markers that all pointed nowhere."""
    text, start, end = match.string, match.start(), match.end()
    before = text[start - 1] if start > 0 else "\n"
    after = text[end] if end < len(text) else "\n"
    if before == "\n" or after in _CLOSING:
        return ""
    # Keep words apart: "Foo [9] bar" and "Foo[9]bar" both become "Foo bar".
    return " " if match["lead"] or match["trail"] or (before.isalnum() and after.isalnum()) else ""
