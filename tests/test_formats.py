"""Text out of files (gateway/formats.py) and file bodies in ingest requests (gateway/requests.py).

Every file is made by the test itself: PDFs with fpdf2 (and pypdf to encrypt
them), HTML and text as literals. The limits on reading files (bytes, time,
memory, workers) are tested in tests/test_caps_parsing.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Sequence

import pypdf
import pytest
from fpdf import FPDF
from PIL import Image

from gateway import formats, requests
from gateway.concurrency import Deadline
from gateway.config import GatewaySettings
from gateway.extraction import FileLimits, FileReader
from gateway.formats import ExtractedText, ExtractionError, TextTooLong, extract, pages_of
from rag.gateway.v1 import gateway_pb2

PAGES = [
    "Lighthouse keepers log the weather at dawn.",
    "The foghorn is tested every Tuesday at noon.",
    "Spare lamp bulbs are kept in the zeppelin-shaped cabinet.",
]


def make_pdf(pages: Sequence[str], title: str = "") -> bytes:
    """A PDF with a text layer: one page per string."""
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def pdf_of_streams(streams: Sequence[bytes], pages: Sequence[int]) -> bytes:
    """A PDF whose pages show the given content streams (pages[i] is page i's stream), Flate-compressed.

    Pages may share a stream: the file stays small however many pages show it.
    """
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    stream_numbers = []
    for stream in streams:
        packed = zlib.compress(stream)
        header = f"<< /Length {len(packed)} /Filter /FlateDecode >>\nstream\n".encode()
        objects.append(header + packed + b"\nendstream")
        stream_numbers.append(len(objects))
    kids = []
    for index in pages:
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {stream_numbers[index]} 0 R"
            " /Resources << /Font << /F1 3 0 R >> >> >>".encode()
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypt(content: bytes, user_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(content))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _extract(content: bytes, content_type: str, filename: str) -> ExtractedText:
    return extract(content, content_type, filename, max_text_bytes=GatewaySettings().max_document_bytes)


def scanned_pdf() -> bytes:
    """A page that is only a picture, as a scanner makes it: no text layer."""
    pdf = FPDF()
    pdf.add_page()
    pdf.image(Image.new("L", (64, 32), color=200), x=10, y=10, w=100)
    return bytes(pdf.output())


# --- PDF ---


def test_a_pdf_gives_its_text_pages_and_title() -> None:
    extracted = _extract(make_pdf(PAGES, title="Keeper's manual"), "application/pdf", "manual.pdf")

    assert extracted.title == "Keeper's manual"
    assert len(extracted.page_starts) == 3
    for start, text in zip(extracted.page_starts, PAGES, strict=True):
        assert extracted.text[start:].startswith(text)
    assert extracted.text == formats.PAGE_SEPARATOR.join(PAGES)


def test_each_word_of_a_pdf_is_found_on_its_own_page() -> None:
    extracted = _extract(make_pdf(PAGES), "application/pdf", "manual.pdf")

    for page, word in [(1, "dawn"), (2, "foghorn"), (3, "zeppelin")]:
        start = extracted.text.index(word)
        assert pages_of(extracted.page_starts, start, start + len(word)) == [page]
    assert extracted.title == ""


def test_an_encrypted_pdf_that_needs_a_password_fails() -> None:
    with pytest.raises(ExtractionError, match="encrypted PDF: it needs a password"):
        _extract(encrypt(make_pdf(PAGES), user_password="secret"), "application/pdf", "locked.pdf")


def test_a_pdf_encrypted_only_against_copying_is_read() -> None:
    """An empty user password opens in any viewer without asking, so it opens here too."""
    extracted = _extract(encrypt(make_pdf(PAGES), user_password=""), "application/pdf", "restricted.pdf")

    assert "foghorn" in extracted.text
    assert len(extracted.page_starts) == 3


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(make_pdf(PAGES)[:300], id="truncated"),
        pytest.param(b"%PDF-1.7\n" + bytes(range(256)) * 8, id="header then noise"),
        pytest.param(b"PK\x03\x04 a zip file", id="not a pdf"),
    ],
)
def test_a_corrupt_pdf_fails_with_a_reason(content: bytes) -> None:
    with pytest.raises(ExtractionError, match="not a valid PDF"):
        _extract(content, "application/pdf", "broken.pdf")


@pytest.mark.parametrize("content", [scanned_pdf(), make_pdf([""])], ids=["scanned", "blank page"])
def test_a_pdf_without_a_text_layer_fails(content: bytes) -> None:
    with pytest.raises(ExtractionError, match="PDF has no text layer"):
        _extract(content, "application/pdf", "scan.pdf")


# --- pages_of ---


@pytest.mark.parametrize(
    ("start", "end", "pages"),
    [
        (0, 5, [1]),
        (0, 10, [1]),  # end is exclusive: offset 10 is page 2's first character
        (9, 11, [1, 2]),
        (12, 25, [2, 3]),
        (0, 40, [1, 2, 3]),
        (30, 30, [3]),
    ],
)
def test_pages_of_a_chunk(start: int, end: int, pages: list[int]) -> None:
    assert pages_of((0, 10, 20), start, end) == pages


def test_a_page_without_text_inside_a_chunk_counts_and_otherwise_does_not() -> None:
    starts = (0, 10, 10, 20)  # page 2 is empty: page 3 starts where it does

    assert pages_of(starts, 5, 15) == [1, 2, 3]
    assert pages_of(starts, 10, 15) == [3]


def test_text_without_pages_has_no_pages() -> None:
    assert pages_of((), 0, 100) == []


# --- HTML ---

NOISY_PAGE = """<!doctype html>
<html><head><title>  Tomato
  care </title><style>p { color: red }</style><script>var noise = "SCRIPT";</script></head>
<body>
<header>SITE BANNER</header>
<nav><a href="/">Home</a> NAV LINKS</nav>
<article>
  <header><h1>Growing tomatoes</h1></header>
  <p>Water them <b>every</b> morning
     in summer.</p>
  <p hidden>HIDDEN ATTRIBUTE</p>
  <div style="color: red; display : none">HIDDEN STYLE</div>
  <span aria-hidden="true">ARIA HIDDEN</span>
  <ul><li>Stake the stems</li><li>Pinch the<br>side shoots</li></ul>
  <!-- a COMMENT -->
  <template>TEMPLATE</template>
</article>
<aside>ASIDE</aside>
<footer>FOOTER</footer>
<noscript>NOSCRIPT</noscript>
</body></html>"""


def test_html_gives_its_main_text_and_title() -> None:
    extracted = _extract(NOISY_PAGE.encode(), "text/html", "tomatoes.html")

    assert extracted.title == "Tomato care"
    assert extracted.text.splitlines() == [
        "Growing tomatoes",
        "Water them every morning in summer.",
        "Stake the stems",
        "Pinch the",
        "side shoots",
    ]
    assert extracted.page_starts == ()


def test_html_main_element_is_the_text_when_there_is_one() -> None:
    page = b"<body><div>Cookie banner</div><main><p>The real content.</p></main></body>"

    assert _extract(page, "text/html", "").text == "The real content."


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param("<p>Grüße aus Köln</p>".encode("latin-1"), "text/html; charset=ISO-8859-1", id="header"),
        pytest.param(
            '<meta charset="windows-1252"><p>Grüße aus Köln</p>'.encode("cp1252"), "text/html", id="meta"
        ),
        pytest.param("<p>Grüße aus Köln</p>".encode(), "text/html", id="utf-8"),
    ],
)
def test_html_honours_its_charset(content: bytes, content_type: str) -> None:
    assert _extract(content, content_type, "page.html").text == "Grüße aus Köln"


def test_deeply_nested_html_does_not_overflow_the_stack() -> None:
    assert _extract(b"<div>" * 20_000 + b"deep", "text/html", "").text == "deep"


# --- text and Markdown ---


def test_text_honours_the_charset_of_its_content_type() -> None:
    content = "Grüße aus Köln".encode("latin-1")

    assert _extract(content, 'text/plain; charset="latin-1"', "").text == "Grüße aus Köln"


def test_text_that_is_not_utf8_and_says_no_charset_fails() -> None:
    with pytest.raises(ExtractionError, match=r"not valid UTF-8 \(byte 2\)"):
        _extract("Grüße".encode("latin-1"), "text/plain", "")


def test_an_unknown_charset_fails() -> None:
    with pytest.raises(ExtractionError, match="unknown charset 'klingon'"):
        _extract(b"Qapla'", "text/plain; charset=klingon", "")


def test_markdown_keeps_its_markup_and_gives_its_heading_as_title() -> None:
    extracted = _extract("\ufeff# Runbook\n\nRestart \x00the *service*.\n".encode(), "text/markdown", "")

    assert extracted == formats.ExtractedText(text="# Runbook\n\nRestart the *service*.\n", title="Runbook")


# --- choosing the format ---


@pytest.mark.parametrize(
    ("content_type", "filename"),
    [
        ("TEXT/HTML; charset=utf-8", "notes.txt"),  # the content type wins over the name
        ("", "notes.HTM"),
        ("application/octet-stream", "notes.html"),  # says nothing, so the name decides
        ("application/xhtml+xml", ""),
    ],
)
def test_the_format_is_chosen_by_content_type_else_extension(content_type: str, filename: str) -> None:
    assert _extract(b"<title>T</title><p>Body</p>", content_type, filename) == formats.ExtractedText(
        text="Body", title="T"
    )


@pytest.mark.parametrize(
    ("content_type", "filename", "reason"),
    [
        ("image/png", "photo.png", "unsupported content type 'image/png'"),
        ("", "report.docx", "cannot tell the format of 'report.docx'"),
        ("", "", "cannot tell the format of a file without a name"),
    ],
)
def test_an_unknown_format_fails_clearly(content_type: str, filename: str, reason: str) -> None:
    with pytest.raises(ExtractionError, match=reason):
        _extract(b"data", content_type, filename)


def test_an_empty_file_fails() -> None:
    with pytest.raises(ExtractionError, match="the file is empty"):
        _extract(b"", "application/pdf", "empty.pdf")


# --- file bodies in ingest requests ---


async def _documents(
    protos: Sequence[gateway_pb2.Document], settings: GatewaySettings
) -> list[requests.IncomingDocument]:
    return await requests.documents(
        protos, settings, FileReader(FileLimits.from_settings(settings)), Deadline(60)
    )


def _file(document_id: str, content: bytes, filename: str, title: str = "") -> gateway_pb2.Document:
    return gateway_pb2.Document(
        id=document_id, title=title, file=gateway_pb2.File(content=content, filename=filename)
    )


async def test_a_file_document_carries_its_text_pages_and_title() -> None:
    [document] = await _documents(
        [_file("manual", make_pdf(PAGES, title="Keeper's manual"), "manual.pdf")], GatewaySettings()
    )

    assert document.error is None
    assert document.title == "Keeper's manual"
    assert "foghorn" in document.text
    start = document.text.index("zeppelin")
    assert document.chunk_pages(start, start + 8) == [3]


@pytest.mark.parametrize(
    ("title", "content", "expected"),
    [
        ("Given title", make_pdf(PAGES, title="Own title"), "Given title"),
        ("", make_pdf(PAGES, title="Own title"), "Own title"),
        ("", make_pdf(PAGES), "manual.pdf"),
    ],
)
async def test_the_title_is_the_callers_else_the_files_else_its_name(
    title: str, content: bytes, expected: str
) -> None:
    [document] = await _documents([_file("manual", content, "manual.pdf", title)], GatewaySettings())

    assert document.title == expected


async def test_files_that_cannot_be_read_fail_alone_with_their_reason() -> None:
    documents = await _documents(
        [
            _file("good", make_pdf(PAGES), "good.pdf"),
            _file("locked", encrypt(make_pdf(PAGES), "secret"), "locked.pdf"),
            _file("broken", b"%PDF-1.4 then nothing", "broken.pdf"),
            _file("blank", b"<p>  </p>", "blank.html"),
            _file("odd", b"data", "odd.xyz"),
        ],
        GatewaySettings(),
    )

    errors = {d.id: d.error for d in documents}
    assert errors["good"] is None
    assert "encrypted PDF" in str(errors["locked"])
    assert "not a valid PDF" in str(errors["broken"])
    assert errors["blank"] == "no text found in the file"
    assert "cannot tell the format of 'odd.xyz'" in str(errors["odd"])
    assert all(d.text == "" for d in documents if d.error)


@pytest.mark.parametrize(
    ("content", "filename"),
    [
        pytest.param(b"x" * 101, "long.txt", id="text"),
        pytest.param("é".encode() * 51, "long.md", id="102 bytes in 51 characters"),
        pytest.param(b"<p>" + b"x " * 60 + b"</p>", "long.html", id="html"),
        pytest.param(make_pdf(["x " * 30, "y " * 30]), "long.pdf", id="pdf"),
    ],
)
async def test_a_file_whose_text_is_over_the_limit_fails(content: bytes, filename: str) -> None:
    [document] = await _documents([_file("long", content, filename)], GatewaySettings(max_document_bytes=100))

    assert document.error == "its text is longer than the 100 bytes a document may hold"


async def test_a_file_whose_text_is_at_the_limit_is_read() -> None:
    [document] = await _documents(
        [_file("full", "é".encode() * 50, "full.txt")], GatewaySettings(max_document_bytes=100)
    )

    assert document.error is None
    assert document.text == "é" * 50


async def test_a_pdf_is_read_no_further_than_the_page_that_passes_the_text_limit() -> None:
    """The pages after it would take minutes to parse: the outcome says they were not."""
    long_page = b"BT /F1 12 Tf 72 712 Td (" + b"word " * 100 + b") Tj ET"
    slow_page = b"BT /F1 12 Tf 72 712 Td (word) Tj ET\n" * 20_000
    content = pdf_of_streams([long_page, slow_page], [0] + [1] * 200)
    settings = GatewaySettings(max_document_bytes=100, parse_timeout_s=20)

    [document] = await _documents([_file("long", content, "long.pdf")], settings)

    assert document.error == "its text is longer than the 100 bytes a document may hold"


def test_a_files_own_title_is_cut_to_the_title_limit() -> None:
    extracted = _extract(b"<title>" + b"t" * 5000 + b"</title><p>Body</p>", "text/html", "page.html")

    assert extracted.title == "t" * formats.MAX_TITLE_CHARS


def test_text_too_long_is_an_extraction_error() -> None:
    with pytest.raises(TextTooLong):
        extract(b"<p>" + b"x" * 11 + b"</p>", "text/html", "page.html", max_text_bytes=10)


async def test_the_same_file_sent_again_hashes_the_same() -> None:
    content = make_pdf(PAGES)
    [first] = await _documents([_file("manual", content, "manual.pdf")], GatewaySettings())
    [again] = await _documents([_file("manual", content, "manual.pdf")], GatewaySettings())
    [as_text] = await _documents(
        [gateway_pb2.Document(id="manual", title="manual.pdf", text=first.text)], GatewaySettings()
    )

    assert first.content_hash("fp") == again.content_hash("fp")
    # The pages shape the stored chunks, so they are part of the hash.
    assert first.content_hash("fp") != as_text.content_hash("fp")


async def test_text_documents_hash_as_before_pages_existed() -> None:
    """A changed hash would re-embed every stored document after an upgrade."""
    [document] = await _documents(
        [gateway_pb2.Document(id="note", title="Note", text="Plants on Fridays.")], GatewaySettings()
    )

    before = json.dumps(["fp", "Note", "Plants on Fridays.", {}], sort_keys=True, ensure_ascii=False)
    assert document.content_hash("fp") == hashlib.sha256(before.encode()).hexdigest()
