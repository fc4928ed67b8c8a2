"""Autoscalers, disruption budgets, and database connections that fit PostgreSQL at full scale."""

from __future__ import annotations

import itertools

from tests.k8s.objects import (
    only_container,
    pods_selected,
    service_env,
)
from tests.k8s.rendering import Rendered
from tests.k8s.services import SERVICES

CPU_TARGET = {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
# The Prometheus name of rag.embedder.queue.depth; tests/e2e/test_service_metrics.py scrapes it.
QUEUE_DEPTH_METRIC = "rag_embedder_queue_depth"
POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
POSTGRES_RESERVED_CONNECTIONS = 3  # superuser_reserved_connections


def test_autoscalers_and_disruption_budgets(render: Rendered) -> None:
    autoscalers = {h["spec"]["scaleTargetRef"]["name"]: h for h in render.all("HorizontalPodAutoscaler")}
    for name, hpa in autoscalers.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        deployment = render.one(hpa["spec"]["scaleTargetRef"]["kind"], name)
        # A replicas field would be re-applied on every `kubectl apply`, fighting the HPA.
        assert "replicas" not in deployment["spec"], f"{render.name}: {name} has replicas and an HPA"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for service in SERVICES:
        pdb = render.one("PodDisruptionBudget", service)
        (selected,) = pods_selected(render, pdb["spec"]["selector"]["matchLabels"])
        assert selected["metadata"]["name"] == service
        floor = autoscalers[service]["spec"]["minReplicas"] if service in autoscalers else None
        floor = floor or render.one("Deployment", service)["spec"].get("replicas", 1)
        min_available = pdb["spec"].get("minAvailable")
        if isinstance(min_available, int):
            # Otherwise no node could ever be drained.
            assert min_available < floor, (
                f"{render.name}: PDB {service} minAvailable {min_available} >= {floor}"
            )

    if render.name.startswith("overlays/dev"):
        assert not autoscalers
        for service in SERVICES:
            assert render.one("Deployment", service)["spec"]["replicas"] == 1
    if render.name.startswith("overlays/prod"):
        assert set(autoscalers) == set(SERVICES)
        metrics = autoscalers["embedder"]["spec"]["metrics"]
        # CPU always; with the component, the queue depth as well.
        assert {"type": "Resource", "resource": CPU_TARGET} in metrics, render.name
        pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
        if "embedder-queue-autoscaling" in render.name:
            assert [p["metric"]["name"] for p in pods] == [QUEUE_DEPTH_METRIC], render.name
        else:
            assert not pods, render.name
        for service in SERVICES:
            assert autoscalers[service]["spec"]["minReplicas"] >= 3
            assert render.one("PodDisruptionBudget", service)["spec"].get("minAvailable") == 2


def _max_connections(render: Rendered) -> int | None:
    """PostgreSQL's max_connections: the StatefulSet's, or every instance's of a CloudNativePG Cluster
    (the standbys take the read pools); None for a database deployed elsewhere."""
    statefulset = render.get("StatefulSet", "postgres")
    if statefulset is not None:
        args = only_container(statefulset).get("args", [])
        for flag, value in itertools.pairwise(args):
            if flag == "-c" and value.startswith("max_connections="):
                return int(value.partition("=")[2])
        return POSTGRES_DEFAULT_MAX_CONNECTIONS
    for cluster in render.all("Cluster"):
        parameters = cluster["spec"].get("postgresql", {}).get("parameters", {})
        return int(parameters.get("max_connections", POSTGRES_DEFAULT_MAX_CONNECTIONS))
    return None


def test_database_connections_fit_postgres(render: Rendered) -> None:
    max_connections = _max_connections(render)
    if max_connections is None:
        assert "external-postgres" in render.name, f"{render.name}: no PostgreSQL"
        return
    hpa = next(
        (
            h
            for h in render.all("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == "retriever"
        ),
        None,
    )
    replicas = (
        hpa["spec"]["maxReplicas"] if hpa else render.one("Deployment", "retriever")["spec"]["replicas"]
    )
    pool = int(service_env(render, SERVICES["retriever"]).get("RETRIEVER_POOL_MAX_SIZE", "10"))
    assert replicas * pool <= max_connections - POSTGRES_RESERVED_CONNECTIONS, (
        f"{render.name}: {replicas} retrievers x {pool} connections > max_connections {max_connections}"
    )
