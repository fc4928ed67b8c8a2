"""Files through the whole system: PDF and HTML sent as file bodies, by the API and by `rag ingest`."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli.main import main
from rag_cli.stack import Stack
from tests.test_formats import make_pdf

# Pages on topics of their own, each longer than a chunk, so a chunk stays on one or two pages.
MANUAL = [
    "The lighthouse keeper logs wind, swell and visibility at dawn. The barometer reading goes in the"
    " same book. A falling glass means the storm shutters are checked before noon.",
    "The foghorn is tested every Tuesday at noon. The compressor is drained first, then the horn is"
    " sounded for ten seconds while a second keeper listens from the jetty.",
    "Spare lamp bulbs are kept in the zeppelin-shaped cabinet in the lantern room. Each bulb is signed"
    " out in the ledger, and the cabinet key hangs beside the radio.",
]
CHUNKING = gateway_pb2.ChunkingOptions(max_tokens=32, overlap_tokens=0)


def _pdf_document(document_id: str, content: bytes) -> gateway_pb2.Document:
    return gateway_pb2.Document(
        id=document_id,
        file=gateway_pb2.File(content=content, content_type="application/pdf", filename=document_id),
    )


def _ingest(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, *documents: gateway_pb2.Document
) -> dict[str, gateway_pb2.DocumentResult]:
    request = gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=documents, chunking=CHUNKING)
    return {r.document_id: r for r in gateway.IngestDocuments(request).results}


def test_a_pdf_is_searchable_by_page_and_a_broken_one_fails_alone(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    """Needs the pipeline's per-document failures and ChunkRecord.pages."""
    manual = make_pdf(MANUAL, title="Keeper's manual")
    results = _ingest(
        gateway, namespace, _pdf_document("manual.pdf", manual), _pdf_document("broken.pdf", manual[:400])
    )
    hits = gateway.Search(
        gateway_pb2.SearchRequest(namespace=namespace, query="where are the spare lamp bulbs kept?")
    ).hits

    assert results["manual.pdf"].status == retriever_pb2.UPSERT_STATUS_CREATED
    assert results["manual.pdf"].chunk_count > 1
    assert results["broken.pdf"].status == retriever_pb2.UPSERT_STATUS_FAILED
    assert "not a valid PDF" in results["broken.pdf"].error
    assert all(hit.document_id == "manual.pdf" for hit in hits)
    top = hits[0]
    assert "zeppelin" in top.text
    assert top.title == "Keeper's manual"
    assert 3 in top.pages
    assert 1 not in top.pages
    assert all(hit.pages for hit in hits)


def test_the_same_file_sent_again_is_unchanged(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    document = _pdf_document("manual.pdf", make_pdf(MANUAL))

    first = _ingest(gateway, namespace, document)["manual.pdf"]
    again = _ingest(gateway, namespace, document)["manual.pdf"]

    assert first.status == retriever_pb2.UPSERT_STATUS_CREATED
    assert again.status == retriever_pb2.UPSERT_STATUS_UNCHANGED
    assert again.chunk_count == first.chunk_count


def test_rag_ingest_reads_pdf_html_and_markdown_from_a_folder(
    stack: Stack,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "manual.pdf").write_bytes(make_pdf(MANUAL, title="Keeper's manual"))
    (tmp_path / "garden").mkdir()
    (tmp_path / "garden" / "tomatoes.htm").write_text(
        "<html><head><title>Tomato care</title><script>var x = 'pelargonium';</script></head>"
        "<body><nav>Home</nav><p>Tomatoes are watered every morning with rainwater from the butt.</p>"
        "</body></html>"
    )
    (tmp_path / "notes.md").write_text("# Notes\n\nThe boat is painted every April.\n")
    (tmp_path / "ignored.docx").write_bytes(b"not read")

    ingest = main(["--gateway", stack.gateway_target, "--namespace", namespace, "ingest", str(tmp_path)])
    ingested = capsys.readouterr().out
    search = gateway_pb2.SearchRequest(namespace=namespace, query="how are the tomatoes watered?")
    top = gateway.Search(search).hits[0]

    assert ingest == 0
    assert "ingested 3 documents" in ingested
    assert "3 created" in ingested
    assert top.document_id == "garden/tomatoes.htm"
    assert top.title == "Tomato care"
    assert top.text == "Tomatoes are watered every morning with rainwater from the butt."
    assert list(top.pages) == []


def test_failed_documents_are_listed_with_their_reason_until_a_good_version_lands(
    stack: Stack,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manual = make_pdf(MANUAL, title="Keeper's manual")
    _ingest(gateway, namespace, _pdf_document("manual.pdf", manual), _pdf_document("log.pdf", manual[:300]))

    def listed(state: retriever_pb2.DocumentState.ValueType) -> dict[str, retriever_pb2.DocumentInfo]:
        request = gateway_pb2.ListDocumentsRequest(namespace=namespace, state=state)
        return {d.document_id: d for d in gateway.ListDocuments(request).documents}

    failed = listed(retriever_pb2.DOCUMENT_STATE_FAILED)
    everything = listed(retriever_pb2.DOCUMENT_STATE_UNSPECIFIED)
    assert list(failed) == ["log.pdf"]
    assert "not a valid PDF" in failed["log.pdf"].failure.reason
    assert not failed["log.pdf"].HasField("updated_at"), "a failed document is never half-stored"
    assert everything["manual.pdf"].chunk_count > 1
    assert everything["manual.pdf"].title == "Keeper's manual"
    assert not everything["manual.pdf"].HasField("failure")
    hits = gateway.Search(gateway_pb2.SearchRequest(namespace=namespace, query="foghorn compressor")).hits
    assert {hit.document_id for hit in hits} == {"manual.pdf"}

    assert main(["--gateway", stack.gateway_target, "--namespace", namespace, "documents", "--failed"]) == 0
    printed = capsys.readouterr().out
    assert "log.pdf" in printed
    assert "not a valid PDF" in printed
    assert "manual.pdf" not in printed

    _ingest(gateway, namespace, _pdf_document("log.pdf", make_pdf(["The log is kept in the lantern room."])))
    assert listed(retriever_pb2.DOCUMENT_STATE_FAILED) == {}
    assert listed(retriever_pb2.DOCUMENT_STATE_INDEXED)["log.pdf"].chunk_count == 1
