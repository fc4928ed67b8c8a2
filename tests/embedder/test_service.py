"""The embedder as a process: concurrency, backpressure, cache, truncation and the stream, over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from rag.embedder.v1 import embedder_pb2
from services.embedder.model import EmbeddingModel
from tests.embedder.conftest import StartEmbedder


def vectors(response: embedder_pb2.EmbedResponse) -> np.ndarray:
    return np.array([list(embedding.values) for embedding in response.embeddings], dtype=np.float32)


def status_details(error: grpc.RpcError) -> status_pb2.Status:
    trailers = {metadatum.key: metadatum.value for metadatum in error.trailing_metadata()}
    return status_pb2.Status.FromString(trailers["grpc-status-details-bin"])


def test_200_concurrent_calls_each_get_exactly_their_own_vectors(
    start_embedder: StartEmbedder, model: EmbeddingModel
) -> None:
    embedder = start_embedder(cache_size="0")
    texts = [f"question {i}: what does protein {i * 13} bind to in cell line {i % 7}?" for i in range(200)]

    with ThreadPoolExecutor(max_workers=200) as pool:
        responses = list(
            pool.map(lambda text: embedder.Embed(embedder_pb2.EmbedRequest(texts=[text])), texts)
        )

    got = np.concatenate([vectors(response) for response in responses])
    expected = model.encoder.encode(model.tokenizer.tokenize(texts))
    assert (got * expected).sum(axis=1).min() > 0.9999


def test_over_the_queue_bound_it_answers_resource_exhausted_with_a_retry_hint_then_recovers(
    start_embedder: StartEmbedder,
) -> None:
    embedder = start_embedder(max_queued_texts="8", inference_batch_size="4", cache_size="0")
    requests = [embedder_pb2.EmbedRequest(texts=[f"load {i} {j} " * 30 for j in range(4)]) for i in range(40)]

    def call(request: embedder_pb2.EmbedRequest) -> grpc.RpcError | None:
        try:
            embedder.Embed(request, timeout=60)
        except grpc.RpcError as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=40) as pool:
        outcomes = list(pool.map(call, requests))

    refused = [error for error in outcomes if error is not None]
    assert refused, "40 concurrent requests of 4 texts must overflow a queue of 8"
    assert len(refused) < len(requests), "the queue admits what fits"
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry in about" in (error.details() or "")
        (detail,) = status_details(error).details
        retry = error_details_pb2.RetryInfo()
        assert detail.Unpack(retry)
        assert retry.retry_delay.ToMilliseconds() > 0
    # Recovered: the queue drained, a request goes through.
    assert len(embedder.Embed(embedder_pb2.EmbedRequest(texts=["after the storm"])).embeddings) == 1
    assert embedder.Info(embedder_pb2.InfoRequest()).batching.queued_texts == 0


def test_a_cache_hit_returns_identical_vectors_and_is_counted(start_embedder: StartEmbedder) -> None:
    embedder = start_embedder(cache_size="100")
    request = embedder_pb2.EmbedRequest(
        texts=["what lowers blood pressure?", "a second text"], input_type=embedder_pb2.INPUT_TYPE_QUERY
    )

    first = embedder.Embed(request)
    second = embedder.Embed(request)
    as_document = embedder.Embed(embedder_pb2.EmbedRequest(texts=["what lowers blood pressure?"]))

    assert first.cache_hits == 0
    assert second.cache_hits == 2
    assert np.array_equal(vectors(first), vectors(second))
    assert as_document.cache_hits == 0, "queries and documents are cached apart"
    cache = embedder.Info(embedder_pb2.InfoRequest()).cache
    assert (cache.hits, cache.misses, cache.size, cache.capacity) == (2, 3, 3, 100)


def test_truncation_is_flagged_or_refused_as_the_request_asks(start_embedder: StartEmbedder) -> None:
    embedder = start_embedder(cache_size="100")
    long_text = "word " * 600

    cut = embedder.Embed(embedder_pb2.EmbedRequest(texts=["short", long_text], truncate=True))
    with pytest.raises(grpc.RpcError) as refused:
        embedder.Embed(embedder_pb2.EmbedRequest(texts=["short", long_text], truncate=False))

    assert [e.truncated for e in cut.embeddings] == [False, True]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1] is longer than the 256 tokens" in (refused.value.details() or "")
    default = embedder.Info(embedder_pb2.InfoRequest()).truncate_by_default
    assert default is True
    assert embedder.Embed(embedder_pb2.EmbedRequest(texts=[long_text])).embeddings[0].truncated


def test_the_stream_answers_every_batch_in_order(
    start_embedder: StartEmbedder, model: EmbeddingModel
) -> None:
    embedder = start_embedder(cache_size="0", stream_window="2")
    batches = [[f"chunk {i}.{j}: " + "the cell divides and grows " * 8 for j in range(8)] for i in range(12)]

    def requests() -> Iterator[embedder_pb2.EmbedStreamRequest]:
        for sequence, texts in enumerate(batches):
            yield embedder_pb2.EmbedStreamRequest(
                sequence=1000 + sequence, batch=embedder_pb2.EmbedRequest(texts=texts)
            )

    responses = list(embedder.EmbedStream(requests()))

    assert [r.sequence for r in responses] == [1000 + i for i in range(len(batches))]
    got = np.concatenate([vectors(r.batch) for r in responses])
    expected = model.encoder.encode(model.tokenizer.tokenize([t for texts in batches for t in texts]))
    assert (got * expected).sum(axis=1).min() > 0.9999


def test_a_bad_batch_ends_the_stream_with_invalid_argument_naming_it(start_embedder: StartEmbedder) -> None:
    embedder = start_embedder()

    def requests() -> Iterator[embedder_pb2.EmbedStreamRequest]:
        yield embedder_pb2.EmbedStreamRequest(sequence=1, batch=embedder_pb2.EmbedRequest(texts=["fine"]))
        yield embedder_pb2.EmbedStreamRequest(sequence=2, batch=embedder_pb2.EmbedRequest(texts=["ok", " "]))
        yield embedder_pb2.EmbedStreamRequest(sequence=3, batch=embedder_pb2.EmbedRequest(texts=["never"]))

    received: list[int] = []

    def read_all() -> None:
        for response in embedder.EmbedStream(requests()):
            received.append(response.sequence)

    with pytest.raises(grpc.RpcError) as failed:
        read_all()

    assert received == [1]
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch[sequence=2].texts[1] must not be empty or blank" in (failed.value.details() or "")
    assert len(embedder.Embed(embedder_pb2.EmbedRequest(texts=["still serving"])).embeddings) == 1


def test_the_torch_engine_serves_the_same_vectors(
    start_embedder: StartEmbedder, model: EmbeddingModel
) -> None:
    embedder = start_embedder(backend="torch")
    texts = ["torch and onnx agree", "on every text " * 30]

    response = embedder.Embed(embedder_pb2.EmbedRequest(texts=texts))

    assert embedder.Info(embedder_pb2.InfoRequest()).backend == "torch"
    expected = model.encoder.encode(model.tokenizer.tokenize(texts))
    assert (vectors(response) * expected).sum(axis=1).min() > 0.9999


def test_prefixes_by_input_type_come_from_the_settings(
    start_embedder: StartEmbedder, model: EmbeddingModel
) -> None:
    embedder = start_embedder(query_prefix="query: ", document_prefix="passage: ", cache_size="0")
    text = "how do plants fix nitrogen"

    as_query = embedder.Embed(
        embedder_pb2.EmbedRequest(texts=[text], input_type=embedder_pb2.INPUT_TYPE_QUERY)
    )
    as_document = embedder.Embed(
        embedder_pb2.EmbedRequest(texts=[text], input_type=embedder_pb2.INPUT_TYPE_DOCUMENT)
    )

    expected = model.encoder.encode(model.tokenizer.tokenize(["query: " + text, "passage: " + text]))
    assert (vectors(as_query)[0] * expected[0]).sum() > 0.9999
    assert (vectors(as_document)[0] * expected[1]).sum() > 0.9999
