"""Every metric and label the monitoring component's dashboard and alerts name is one the services export.

A query on a misspelt name is not an error in Prometheus or Grafana: the panel
stays empty and the alert never fires. So the names are read out of every
expression (tests/k8s/monitoring.py: the tokenizer and what it cannot see) and
looked up in a live scrape of the four services, after calls that make every
series the dashboard shows exist: an ingest (created, then unchanged), a
search, asks past the answer cache and one answered from it, a streamed ask.

Labels may also be the ones Prometheus adds to a PodMonitor's series (namespace,
pod, job, ...), and `up` is the one series Prometheus writes itself.
"""

from __future__ import annotations

import urllib.request
import uuid
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from services.common.registry import DEFAULT_PORTS
from tests.conftest import THREE_TOPICS, sample_document
from tests.k8s.monitoring import (
    SCRAPE_SERIES,
    TARGET_LABELS,
    component_queries,
    pod_target_labels,
)


@dataclass(frozen=True)
class Exported:
    """Sample names (with their _total, _bucket, ... suffixes) and label names of a scrape."""

    metrics: frozenset[str]
    labels: frozenset[str]


def _scrape(url: str) -> Exported:
    with urllib.request.urlopen(url, timeout=10) as reply:
        families = list(text_string_to_metric_families(reply.read().decode()))
    samples = [sample for family in families for sample in family.samples]
    return Exported(
        frozenset(sample.name for sample in samples),
        frozenset(label for sample in samples for label in sample.labels),
    )


@pytest.fixture(scope="module")
def exported(stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub) -> Exported:
    namespace = "dashboard-metrics"
    # A text no other test sends, so the embedder's model runs a batch and misses its cache.
    unseen = gateway_pb2.Document(
        id="unseen", text=f"Probe {uuid.uuid4()}: the dashboard needs a model batch."
    )
    ingest = gateway_pb2.IngestDocumentsRequest(
        namespace=namespace, documents=[*(sample_document(name) for name in THREE_TOPICS), unseen]
    )
    gateway.IngestDocuments(ingest)
    gateway.IngestDocuments(ingest)  # unchanged
    gateway.Search(gateway_pb2.SearchRequest(namespace=namespace, query="nightly base backup"))
    fresh = gateway_pb2.AskRequest(
        namespace=namespace, question="How long are backups kept?", skip_cache=True
    )
    gateway.Ask(fresh)
    gateway.Ask(fresh)  # the question's embedding from the embedder's cache
    for _ in gateway.AskStream(gateway_pb2.AskStreamRequest(request=fresh)):
        pass
    repeated = gateway_pb2.AskRequest(namespace=namespace, question="Who is on call this week?")
    gateway.Ask(repeated)  # an answer cache miss
    gateway.Ask(repeated)  # and a hit
    scrapes = [_scrape(stack.metrics_url(service)) for service in DEFAULT_PORTS]
    return Exported(
        frozenset().union(*(s.metrics for s in scrapes)), frozenset().union(*(s.labels for s in scrapes))
    )


def test_the_scrape_holds_what_the_calls_made(exported: Exported) -> None:
    # Guards the check below against an empty or partial scrape.
    for service in DEFAULT_PORTS:
        assert f"rag_{service}_rpc_requests_total" in exported.metrics, service
        assert f"rag_{service}_stage_duration_seconds_bucket" in exported.metrics, service
    assert {"rpc_method", "rpc_grpc_status_code", "stage", "le"} <= exported.labels


def test_every_metric_in_the_dashboard_and_the_alerts_is_exported(exported: Exported) -> None:
    queries = component_queries()
    assert len(queries) > 20
    missing = [
        f"{query.where}: {name}"
        for query in queries
        for name in sorted(query.names.metrics - exported.metrics - SCRAPE_SERIES)
    ]
    assert not missing, "not exported by any service:\n" + "\n".join(missing)


def test_every_label_in_the_dashboard_and_the_alerts_is_exported_or_added_by_the_scrape(
    exported: Exported,
) -> None:
    known = exported.labels | TARGET_LABELS | pod_target_labels()
    missing = [
        f"{query.where}: {name}"
        for query in component_queries()
        for name in sorted(query.names.labels - known)
    ]
    assert not missing, "no such label on any series:\n" + "\n".join(missing)
