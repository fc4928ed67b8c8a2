"""Ask with the extractive generator beside Search of the same question, and the generator hop alone."""

from __future__ import annotations

import asyncpg

from gateway.query import generate_request
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2_grpc
from search_bench.paths import CALL_TIMEOUT_S, Sample, timed
from search_bench.report import AskRun
from search_bench.settings import TOP_K

SEARCH = gateway_pb2.RetrievalOptions(top_k=TOP_K)  # the server's default mode: hybrid


async def measure(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub,
    namespace: str,
    queries: list[str],
    count: int,
) -> AskRun:
    """`count` questions, each asked (the answer cache skipped), searched, and its hits sent to the
    generator directly, in an order that turns with each question."""
    asks: list[Sample] = []
    searches: list[Sample] = []
    generations: list[Sample] = []
    for index, question in enumerate(queries[:count]):
        ask = gateway_pb2.AskRequest(
            namespace=namespace, question=question, retrieval=SEARCH, skip_cache=True
        )
        search = gateway_pb2.SearchRequest(namespace=namespace, query=question, retrieval=SEARCH)
        if index % 2:
            _, asked = await timed(gateway.Ask(ask, timeout=CALL_TIMEOUT_S))
            found, searched = await timed(gateway.Search(search, timeout=CALL_TIMEOUT_S))
        else:
            found, searched = await timed(gateway.Search(search, timeout=CALL_TIMEOUT_S))
            _, asked = await timed(gateway.Ask(ask, timeout=CALL_TIMEOUT_S))
        asks.append(asked)
        searches.append(searched)
        request = generate_request(gateway_pb2.AskRequest(question=question), found.hits)
        _, generated = await timed(generator.Generate(request, timeout=CALL_TIMEOUT_S))
        generations.append(generated)
    return AskRun(asks, searches, generations)


async def chunk_count(dsn: str, namespace: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM rag_chunks WHERE namespace = $1", namespace))
    finally:
        await conn.close()
