"""Text out of files: PDF (with its pages), HTML (main text and title), Markdown and plain text.

The format is chosen by content type, else by the filename's extension. A file
that cannot be read (corrupt, encrypted, scanned without a text layer, of an
unknown type, with more text than a document may hold) raises ExtractionError
with a reason meant for the caller; the gateway reports it as that document's
failure, never as the request's.

The text limit is applied while extracting: reading stops at the first page
(PDF) or element (HTML) past it. PDF and HTML parsing runs in a bounded worker
process (gateway/extraction.py); this module is what the worker runs.
"""

from __future__ import annotations

import bisect
import io
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

import pypdf
from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning
from bs4.element import NavigableString, PageElement, Tag
from pypdf import PasswordType

log = logging.getLogger(__name__)

# Past this a PDF is refused rather than parsed for minutes while the gateway waits.
MAX_PDF_PAGES = 2000

# The longest title a document may have: a caller's longer one is refused, a
# file's own is cut to it (it can be anything).
MAX_TITLE_CHARS = 1000

PAGE_SEPARATOR = "\n\n"

# bs4 warns about input it finds odd (a bare URL, an XHTML file); a gateway parses
# whatever callers send, so these say nothing to whoever reads its log.
warnings.filterwarnings("ignore", category=MarkupResemblesLocatorWarning)
warnings.filterwarnings("ignore", category=XMLParsedAsHTMLWarning)


FileFormat = Literal["pdf", "html", "markdown", "text"]


class ExtractionError(ValueError):
    """The file cannot be turned into text; the message says why, for the caller."""


class TextTooLong(ExtractionError):
    def __init__(self, max_text_bytes: int) -> None:
        super().__init__(f"its text is longer than the {max_text_bytes} bytes a document may hold")


@dataclass(frozen=True)
class ExtractedText:
    text: str
    # The document's own title (PDF metadata, HTML <title>, a Markdown "# " heading), cut to
    # MAX_TITLE_CHARS; may be empty.
    title: str
    # Character offset in text where each page begins, page 1 first; empty for formats without pages.
    page_starts: tuple[int, ...] = ()


def pages_of(page_starts: Sequence[int], start_char: int, end_char: int) -> list[int]:
    """The 1-based pages a chunk [start_char, end_char) of the text spans; [] for unpaged text.

    Pages with no text of their own that lie inside the chunk count too: the
    chunk runs across them.
    """
    if not page_starts:
        return []
    first = _page_at(page_starts, start_char)
    last = _page_at(page_starts, max(start_char, end_char - 1))
    return list(range(first, last + 1))


def _page_at(page_starts: Sequence[int], offset: int) -> int:
    # The last page starting at or before offset: an empty page shares its start
    # with the next one, and the text there belongs to that next page.
    return max(1, bisect.bisect_right(page_starts, offset))


def extract(content: bytes, content_type: str, filename: str, *, max_text_bytes: int) -> ExtractedText:
    """The text of a file, of at most max_text_bytes (UTF-8); raises ExtractionError when it cannot be had."""
    file_format, charset = detect(content_type, filename)
    return read(file_format, content, charset, max_text_bytes=max_text_bytes)


def detect(content_type: str, filename: str) -> tuple[FileFormat, str | None]:
    """The file's format and the charset its content type names (None when it names none)."""
    media_type, charset = _parse_content_type(content_type)
    return _kind(media_type, filename), charset


def read(
    file_format: FileFormat, content: bytes, charset: str | None, *, max_text_bytes: int
) -> ExtractedText:
    """The text of a file in a known format; raises ExtractionError when it cannot be had."""
    if not content:
        raise ExtractionError("the file is empty")
    extracted = _EXTRACTORS[file_format](content, charset, max_text_bytes)
    # The extractors stop once the characters alone are too many; a character
    # may take up to four bytes, so the exact count comes last.
    if len(extracted.text.encode()) > max_text_bytes:
        raise TextTooLong(max_text_bytes)
    return extracted


_MEDIA_TYPES: dict[str, FileFormat] = {
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
}
_EXTENSIONS: dict[str, FileFormat] = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
}
# Types that say nothing about the format, so the extension decides.
_GENERIC_MEDIA_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


def _parse_content_type(content_type: str) -> tuple[str, str | None]:
    """("text/html", "latin-1") from "text/HTML; charset=Latin-1"; charset None when absent."""
    media_type, *parameters = content_type.split(";")
    charset = None
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip(' "'):
            charset = value.strip(' "').lower()
    return media_type.strip().lower(), charset


def _kind(media_type: str, filename: str) -> FileFormat:
    if media_type in _MEDIA_TYPES:
        return _MEDIA_TYPES[media_type]
    accepted = ", ".join(sorted(_MEDIA_TYPES))
    if media_type not in _GENERIC_MEDIA_TYPES:
        raise ExtractionError(f"unsupported content type {media_type!r}; accepted: {accepted}")
    extension = PurePath(filename).suffix.lower()
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    name = repr(filename) if filename else "a file without a name"
    raise ExtractionError(
        f"cannot tell the format of {name}: give a content type ({accepted})"
        f" or a filename ending in {', '.join(sorted(_EXTENSIONS))}"
    )


def _clean(text: str) -> str:
    """Text that every later stage can carry.

    PostgreSQL text cannot hold NUL, and a lone surrogate (PDF text extraction
    makes them from broken font maps) cannot be encoded for the wire.
    """
    return text.replace("\x00", "").encode("utf-8", errors="replace").decode("utf-8")


# --- plain text and Markdown ---


def _decode(content: bytes, charset: str | None) -> str:
    try:
        # utf-8-sig: a byte order mark is not part of the text.
        return content.decode("utf-8-sig" if charset in (None, "utf-8", "utf8") else charset)
    except LookupError as error:
        raise ExtractionError(f"unknown charset {charset!r}") from error
    except UnicodeDecodeError as error:
        raise ExtractionError(
            f"the text is not valid {charset or 'UTF-8'} (byte {error.start});"
            " send UTF-8 or name the charset in the content type"
        ) from error


def _plain_text(content: bytes, charset: str | None, max_text_bytes: int) -> ExtractedText:
    del max_text_bytes  # the whole file is the text: checked once decoded
    return ExtractedText(text=_clean(_decode(content, charset)), title="")


def _markdown(content: bytes, charset: str | None, max_text_bytes: int) -> ExtractedText:
    del max_text_bytes  # the whole file is the text: checked once decoded
    text = _clean(_decode(content, charset))
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "")
    return ExtractedText(text=text, title=title[:MAX_TITLE_CHARS])


# --- PDF ---


def _pdf(content: bytes, charset: str | None, max_text_bytes: int) -> ExtractedText:
    del charset  # a PDF names its own encodings
    # pypdf raises its own errors for most damage, but builtin ones (KeyError,
    # ValueError, RecursionError...) for some; any of them means the same thing here.
    # Running out of memory says nothing about the file: the worker reports it.
    try:
        reader = _open_pdf(content)
        pages = _page_texts(reader, max_text_bytes)
        title = _pdf_title(reader)
    except (ExtractionError, MemoryError):
        raise
    except Exception as error:
        raise ExtractionError(f"not a valid PDF: {error or type(error).__name__}") from error
    if not any(pages):
        raise ExtractionError("PDF has no text layer (a scan or images only?); run OCR on it first")
    return ExtractedText(text=PAGE_SEPARATOR.join(pages), title=title, page_starts=_starts(pages))


def _open_pdf(content: bytes) -> pypdf.PdfReader:
    """A readable PDF, or ExtractionError.

    Encrypted files with an empty user password (only copying or printing is
    restricted, which viewers open without asking) are read; a file that needs
    a password to open is refused, as there is no way to pass one.
    """
    # Readers accept a header anywhere in the first KiB; some writers put junk before it.
    if b"%PDF-" not in content[:1024]:
        raise ExtractionError("not a valid PDF: no %PDF- header")
    reader = pypdf.PdfReader(io.BytesIO(content))
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")
        except pypdf.errors.DependencyError as error:
            raise ExtractionError(f"encrypted PDF that cannot be opened here: {error}") from error
        if opened == PasswordType.NOT_DECRYPTED:
            raise ExtractionError("encrypted PDF: it needs a password to open")
    if len(reader.pages) > MAX_PDF_PAGES:
        raise ExtractionError(f"PDF has {len(reader.pages)} pages; at most {MAX_PDF_PAGES} are read")
    return reader


def _page_texts(reader: pypdf.PdfReader, max_text_bytes: int) -> list[str]:
    """Each page's text; a page whose text cannot be read is left empty, so it does not cost the others.

    Stops with TextTooLong at the first page that takes the text past
    max_text_bytes characters (so certainly past as many bytes).
    """
    texts: list[str] = []
    failures: list[Exception] = []
    length = 0
    for number, page in enumerate(reader.pages, start=1):
        try:
            texts.append(_clean(page.extract_text()).strip())
        except MemoryError:
            raise
        except Exception as error:
            log.warning("PDF page %d has text that cannot be read: %r", number, error)
            failures.append(error)
            texts.append("")
        length += len(texts[-1]) + len(PAGE_SEPARATOR)
        if length - len(PAGE_SEPARATOR) > max_text_bytes:
            raise TextTooLong(max_text_bytes)
    if failures and not any(texts):
        raise failures[0]
    return texts


def _pdf_title(reader: pypdf.PdfReader) -> str:
    # Broken metadata is common and must not cost the text.
    try:
        title = reader.metadata.title if reader.metadata else None
    except MemoryError:
        raise
    except Exception:
        return ""
    return _clean(title).strip()[:MAX_TITLE_CHARS] if isinstance(title, str) else ""


def _starts(pages: Sequence[str]) -> tuple[int, ...]:
    starts, offset = [], 0
    for page in pages:
        starts.append(offset)
        offset += len(page) + len(PAGE_SEPARATOR)
    return tuple(starts)


# --- HTML ---

# Not part of the page's own text: code, page chrome, embedded objects.
_DROPPED_TAGS = frozenset(
    {
        "head", "title", "script", "style", "noscript", "template", "nav", "aside", "svg", "iframe",
        "object", "canvas",
    }
)  # fmt: skip
# Page chrome only when they belong to the page, not to an article or section.
_LANDMARK_TAGS = frozenset({"header", "footer"})
_SECTIONING_TAGS = ["article", "section", "main"]
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "li", "main", "ol", "p", "pre", "section", "summary", "table", "tr", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def _html(content: bytes, charset: str | None, max_text_bytes: int) -> ExtractedText:
    # Without a charset (or with one Python does not know) bs4 looks for a byte
    # order mark and <meta charset>, then guesses.
    soup = BeautifulSoup(content, "html.parser", from_encoding=charset)
    title_tag = soup.find("title")
    title = _SPACES.sub(" ", title_tag.get_text()).strip()[:MAX_TITLE_CHARS] if title_tag else ""
    root = soup.find("main") or soup.find(role="main") or soup.body or soup
    assert isinstance(root, Tag)
    return ExtractedText(text=_clean(_visible_text(root, max_text_bytes)), title=_clean(title))


def _visible_text(root: Tag, max_text_bytes: int) -> str:
    """The text a reader sees, one line per block element.

    Walked with a stack rather than recursion: deeply nested markup must not
    overflow Python's stack. Stops with TextTooLong once the pieces hold more
    than max_text_bytes characters besides line breaks (so the text has more
    than as many bytes).
    """
    parts: list[str] = []
    length = 0
    todo: list[PageElement | None] = [root]  # None marks the end of a block element
    while todo:
        node = todo.pop()
        if node is None:
            parts.append("\n")
        elif isinstance(node, Tag):
            _visit_tag(node, parts, todo)
        elif type(node) is NavigableString:  # not comments, doctypes or CDATA
            parts.append(_SPACES.sub(" ", node))
            length += len(parts[-1].strip())
            if length > max_text_bytes:
                raise TextTooLong(max_text_bytes)
    lines = (line.strip() for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _visit_tag(tag: Tag, parts: list[str], todo: list[PageElement | None]) -> None:
    if _is_dropped(tag):
        return
    if tag.name == "br":
        parts.append("\n")
    elif tag.name == "pre":
        # Preformatted text (code, mostly) keeps its line breaks.
        parts.append("\n" + tag.get_text() + "\n")
    else:
        if tag.name in _BLOCK_TAGS:
            parts.append("\n")
            todo.append(None)
        elif tag.name in _CELL_TAGS:
            parts.append(" ")
        todo.extend(reversed(tag.contents))


def _is_dropped(tag: Tag) -> bool:
    if tag.name in _DROPPED_TAGS or tag.has_attr("hidden"):
        return True
    if tag.get("aria-hidden") == "true" or _HIDDEN_STYLE.search(str(tag.get("style") or "")):
        return True
    return tag.name in _LANDMARK_TAGS and tag.find_parent(_SECTIONING_TAGS) is None


_EXTRACTORS: dict[FileFormat, Callable[[bytes, str | None, int], ExtractedText]] = {
    "pdf": _pdf,
    "html": _html,
    "markdown": _markdown,
    "text": _plain_text,
}
