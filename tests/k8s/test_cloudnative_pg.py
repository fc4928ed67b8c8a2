"""The cloudnative-pg component: a CloudNativePG Cluster in place of the PostgreSQL StatefulSet.

Every CloudNativePG object the component renders is checked against the operator's own CRDs
(tests/k8s/crds.py, as strict as `kubectl apply --validate=strict`; the CEL rules in them are not
evaluated), which the Kubernetes schemas of scripts/validate_k8s.py do not cover. Then the wiring: the
retriever writes through the primary's Service and reads through the standbys', the database-setup Job
still creates the retriever's role with the superuser the operator generates, both verify the server's
certificate, pgvector is created at bootstrap, backups are scheduled, the Pooler can carry the
retriever's connections, and the network policies admit what the Cluster's pods need.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

import asyncpg
import pytest
import yaml

from services.common.registry import RETRIEVER
from services.retriever.database_setup import ADMIN_URL_VARIABLE
from services.retriever.role_password import PASSWORD_FILE_VARIABLE
from services.retriever.schema import RETRIEVER_ROLE
from services.retriever.store import connection
from tests.k8s.crds import CRD_DIR, Schema, crd_errors, load_crd_schemas
from tests.k8s.credentials import DATABASE_SECRET, SecretFile, secret_file
from tests.k8s.objects import (
    only_container,
    pod_spec,
    port_allowed,
    secret_key_ref,
    selects_by_expression,
    service_env,
    workload_env,
)
from tests.k8s.rendering import RENDERS, REPO, Manifest, Rendered
from tests.k8s.services import DATABASE_SETUP, POSTGRES_PORT, SERVICES
from tests.k8s.test_network_policies import allowed
from tests.k8s.test_scaling import POSTGRES_RESERVED_CONNECTIONS

COMPONENT = "components/cloudnative-pg"
CNPG_GROUP = "postgresql.cnpg.io"
# Kubernetes' cluster domain, which the DSNs and the certificate's names end with.
CLUSTER_DOMAIN = "cluster.local"
# The key of the Secret rag-database both the retriever (PGPASSWORD) and the Job read.
RETRIEVER_PASSWORD_KEY = "RETRIEVER_PASSWORD"
READ_URLS = f"{RETRIEVER.env_prefix}READ_DATABASE_URLS"
# Startup parameters PgBouncer carries per client without being told (its `track_extra_parameters`
# documentation); it refuses a connection that sends any other, unless ignored or tracked.
PGBOUNCER_TRACKED = {
    "client_encoding",
    "datestyle",
    "timezone",
    "standard_conforming_strings",
    "application_name",
}
CNPG_RENDERS = [r.name for r in RENDERS if COMPONENT in r.name]
PLAIN_OVERLAYS = [r.name for r in RENDERS if not r.components]

Schemas = dict[tuple[str, str], Schema]


@pytest.fixture(scope="module")
def crds() -> Schemas:
    schemas = load_crd_schemas()
    assert (f"{CNPG_GROUP}/v1", "Cluster") in schemas, f"{CRD_DIR} has no CloudNativePG Cluster CRD"
    return schemas


@pytest.fixture(params=CNPG_RENDERS)
def with_cluster(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    result = rendered[request.param]
    assert result.objects, f"{result.name} rendered nothing: {result.errors}"
    return result


def cluster_of(render: Rendered) -> Manifest:
    (cluster,) = render.all("Cluster")
    return cluster


def service_host(render: Rendered, service: str) -> str:
    return f"{service}.{render.namespace}.svc.{CLUSTER_DOMAIN}"


def certificate_names(render: Rendered, cluster: Manifest) -> set[str]:
    """The names on the server certificate the operator issues: its three Services in every form
    a client may use, and the extra names the Cluster asks for."""
    name, namespace = cluster["metadata"]["name"], render.namespace
    names = {
        form
        for suffix in ("rw", "ro", "r")
        for form in (
            f"{name}-{suffix}",
            f"{name}-{suffix}.{namespace}",
            f"{name}-{suffix}.{namespace}.svc",
            f"{name}-{suffix}.{namespace}.svc.{CLUSTER_DOMAIN}",
        )
    }
    return names | set(cluster["spec"].get("certificates", {}).get("serverAltDNSNames", []))


def database_of(cluster: Manifest) -> str:
    return str(cluster["spec"]["bootstrap"]["initdb"]["database"])


def parse_dsn(dsn: str) -> SplitResult:
    url = urlsplit(dsn)
    assert url.scheme in ("postgres", "postgresql"), dsn
    return url


def instance_labels(cluster: Manifest) -> dict[str, str]:
    """What the operator puts on an instance's pod (and, with cnpg.io/cluster, on every pod it runs
    for the Cluster: poolers, bootstrap and join Jobs)."""
    return {
        "cnpg.io/cluster": cluster["metadata"]["name"],
        "cnpg.io/podRole": "instance",
        "app.kubernetes.io/name": "postgresql",
    }


def secrets_read(workload: Manifest) -> set[str]:
    """Every Secret the workload's pods read, through env, envFrom or a volume."""
    pod = pod_spec(workload)
    names = {volume["secret"]["secretName"] for volume in pod.get("volumes", []) if "secret" in volume}
    for container in pod["containers"] + pod.get("initContainers", []):
        names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        refs = (item.get("valueFrom", {}).get("secretKeyRef") for item in container.get("env", []))
        names |= {ref["name"] for ref in refs if ref}
    return names


def _pgbouncer_parameter(pooler: Manifest, name: str) -> str:
    return str(pooler["spec"]["pgbouncer"].get("parameters", {}).get(name, ""))


def _listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def test_the_component_is_rendered_on_every_overlay() -> None:
    overlays = {r.overlay for r in RENDERS}
    assert {r.overlay for r in RENDERS if COMPONENT in r.name} == overlays
    # It includes external-postgres; adding that component beside it would add its patches twice.
    assert not [r.name for r in RENDERS if COMPONENT in r.name and "components/external-postgres" in r.name]


def test_crd_validation_refuses_unknown_fields_and_wrong_types(crds: Schemas) -> None:
    cluster: Manifest = {
        "apiVersion": f"{CNPG_GROUP}/v1",
        "kind": "Cluster",
        "metadata": {"name": "x", "namespace": "rag"},
        "spec": {"instances": 3, "storage": {"size": "1Gi"}},
    }
    assert crd_errors(cluster, crds) == []
    misspelt = {**cluster, "spec": {**cluster["spec"], "instance": 3}}
    assert "'instance' was unexpected" in " ".join(crd_errors(misspelt, crds))
    wrong_type = {**cluster, "spec": {**cluster["spec"], "instances": "three"}}
    assert "spec.instances" in " ".join(crd_errors(wrong_type, crds))


def test_every_cloudnative_pg_object_matches_its_crd(with_cluster: Rendered, crds: Schemas) -> None:
    objects = [o for o in with_cluster.objects if o["apiVersion"].startswith(f"{CNPG_GROUP}/")]
    assert {o["kind"] for o in objects} >= {"Cluster", "ScheduledBackup", "Pooler"}, with_cluster.name
    errors = [error for obj in objects for error in crd_errors(obj, crds)]
    assert not errors, f"{with_cluster.name}:\n" + "\n".join(errors)


@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_the_cluster_replaces_the_statefulset(overlay: str, rendered: dict[str, Rendered]) -> None:
    alone = rendered[overlay]
    assert alone.get("StatefulSet", "postgres") is not None, f"{overlay}: the default PostgreSQL is gone"
    assert alone.get("Service", "postgres") is not None, overlay
    assert not alone.all("Cluster"), overlay
    with_component = rendered[f"{overlay} + {COMPONENT}"]
    assert not with_component.all("StatefulSet"), with_component.name
    assert with_component.get("Service", "postgres") is None, with_component.name
    cluster = cluster_of(with_component)
    synchronous = cluster["spec"]["postgresql"]["synchronous"]
    # A primary and two standbys; a commit waits for fewer standbys than there are, so one may be
    # down (a node drain, a failover) without stopping writes.
    assert cluster["spec"]["instances"] >= 3
    assert 1 <= synchronous["number"] < cluster["spec"]["instances"] - 1


def test_the_image_carries_pgvector_and_bootstrap_creates_it(with_cluster: Rendered) -> None:
    cluster = cluster_of(with_cluster)
    image = cluster["spec"]["imageName"]
    # CloudNativePG's "standard" images carry pgvector; "minimal" ones do not. An explicit minor
    # version: the operator reads the major version from the tag.
    match = re.fullmatch(
        r"ghcr\.io/cloudnative-pg/postgresql:(\d+)\.\d+-standard-[a-z]+(@sha256:[0-9a-f]{64})?", image
    )
    assert match, f"{with_cluster.name}: {image} is not a pinned standard image"
    base = yaml.safe_load_all((REPO / "k8s" / "base" / "postgres.yaml").read_text())
    (statefulset,) = (o for o in base if o["kind"] == "StatefulSet")
    default_major = re.search(r"-pg(\d+)$", only_container(statefulset)["image"])
    assert default_major, "the base's PostgreSQL image no longer names its major version"
    # The same major version as the default StatefulSet, so its dump restores unchanged.
    assert match[1] == default_major[1], (
        f"{image}: PostgreSQL {match[1]}, the default runs {default_major[1]}"
    )
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    # In the application database (postInitSQL would run in "postgres"), or in template1 for all.
    statements = initdb.get("postInitApplicationSQL", []) + initdb.get("postInitTemplateSQL", [])
    creates = [s for s in statements if re.match(r"\s*CREATE EXTENSION (IF NOT EXISTS )?vector\b", s, re.I)]
    assert creates, f"{with_cluster.name}: the bootstrap does not create the vector extension"


def test_the_retriever_writes_to_the_primary_and_reads_from_the_standbys(with_cluster: Rendered) -> None:
    cluster = cluster_of(with_cluster)
    name = cluster["metadata"]["name"]
    retriever = with_cluster.one("Deployment", RETRIEVER.name)
    env = service_env(with_cluster, SERVICES[RETRIEVER.name])
    where = with_cluster.name
    write = parse_dsn(env["DATABASE_URL"])
    reads = [parse_dsn(url) for url in env[READ_URLS].split(",")]
    assert write.hostname == service_host(with_cluster, f"{name}-rw"), where
    assert reads, where
    assert {url.hostname for url in reads} == {service_host(with_cluster, f"{name}-ro")}, where
    for url in [write, *reads]:
        assert url.username == RETRIEVER_ROLE, f"{where}: {url.geturl()}"
        # The password comes from PGPASSWORD: a URL in plain sight holds none.
        assert url.password is None, where
        assert (url.port, url.path) == (POSTGRES_PORT, f"/{database_of(cluster)}"), where
    # The password the Job gives rag_retriever.
    container = only_container(retriever)
    assert secret_key_ref(container, "PGPASSWORD") == (DATABASE_SECRET, RETRIEVER_PASSWORD_KEY), where
    job = with_cluster.one("Job", DATABASE_SETUP)
    password_file = workload_env(with_cluster, job)[PASSWORD_FILE_VARIABLE]
    assert secret_file(job, only_container(job), password_file) == SecretFile(
        DATABASE_SECRET, RETRIEVER_PASSWORD_KEY, sub_path=False
    ), where


def test_the_setup_job_logs_in_as_the_clusters_superuser(with_cluster: Rendered) -> None:
    cluster = cluster_of(with_cluster)
    name = cluster["metadata"]["name"]
    superuser_secret = f"{name}-superuser"
    # The operator generates that Secret only when asked to, and under that name only when no
    # other is given.
    assert cluster["spec"].get("enableSuperuserAccess") is True, with_cluster.name
    assert "superuserSecret" not in cluster["spec"], with_cluster.name
    job = with_cluster.one("Job", DATABASE_SETUP)
    container = only_container(job)
    admin = parse_dsn(workload_env(with_cluster, job)[ADMIN_URL_VARIABLE])
    assert admin.hostname == service_host(with_cluster, f"{name}-rw"), with_cluster.name
    assert (admin.port, admin.path) == (POSTGRES_PORT, f"/{database_of(cluster)}"), with_cluster.name
    assert (admin.username, admin.password) == (None, None), "credentials come from PGUSER and PGPASSWORD"
    assert secret_key_ref(container, "PGUSER") == (superuser_secret, "username"), with_cluster.name
    assert secret_key_ref(container, "PGPASSWORD") == (superuser_secret, "password"), with_cluster.name
    # Nothing else reads the operator's credentials.
    readers = {
        workload["metadata"]["name"]
        for workload in with_cluster.workloads()
        if secrets_read(workload) & {superuser_secret, f"{name}-app"}
    }
    assert readers == {DATABASE_SETUP}, with_cluster.name


def test_clients_verify_the_clusters_certificate(with_cluster: Rendered) -> None:
    cluster = cluster_of(with_cluster)
    names = certificate_names(with_cluster, cluster)
    ca_secret = f"{cluster['metadata']['name']}-ca"
    for kind, workload_name, variables in (
        ("Deployment", RETRIEVER.name, ("DATABASE_URL", READ_URLS)),
        ("Job", DATABASE_SETUP, (ADMIN_URL_VARIABLE,)),
    ):
        workload = with_cluster.one(kind, workload_name)
        env = workload_env(with_cluster, workload)
        where = f"{with_cluster.name}: {workload_name}"
        assert env.get("PGSSLMODE") == "verify-full", where
        assert secret_file(workload, only_container(workload), env.get("PGSSLROOTCERT", "")) == SecretFile(
            ca_secret, "ca.crt", sub_path=False
        ), f"{where}: PGSSLROOTCERT is not the operator's CA ({ca_secret}/ca.crt)"
        for variable in variables:
            for url in env[variable].split(","):
                assert parse_dsn(url).hostname in names, f"{where}: {url} is not a name on the certificate"
    # The server refuses password logins without TLS, whatever a client asks for.
    assert "hostnossl all all all reject" in cluster["spec"]["postgresql"].get("pg_hba", []), (
        with_cluster.name
    )


def test_backups_are_scheduled(with_cluster: Rendered) -> None:
    cluster = cluster_of(with_cluster)
    backups = [
        b
        for b in with_cluster.all("ScheduledBackup")
        if b["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    ]
    assert backups, f"{with_cluster.name}: no ScheduledBackup for the Cluster"
    archivers = {p["name"] for p in cluster["spec"].get("plugins", []) if p.get("isWALArchiver")}
    for backup in backups:
        spec = backup["spec"]
        # The operator's cron has six fields, seconds first; five would be read shifted by one.
        fields = spec["schedule"].split()
        assert len(fields) == 6, f"{spec['schedule']!r}"
        assert re.fullmatch(r"\d{1,2}", fields[0]), f"{spec['schedule']!r}: the first field is the second"
        assert spec.get("method") == "plugin", "the in-tree barmanObjectStore method is deprecated"
        # Base backups go where the WAL is archived: a base backup alone restores to one moment only.
        assert spec["pluginConfiguration"]["name"] in archivers, f"{with_cluster.name}: {archivers}"
        assert not spec.get("suspend"), with_cluster.name


async def _retriever_startup_parameters(monkeypatch: pytest.MonkeyPatch) -> Mapping[str, Any]:
    """The keyword arguments the retriever's pool hands asyncpg, caught before any connection."""
    captured: dict[str, Any] = {}

    async def create_pool(dsn: str, **kwargs: Any) -> None:
        captured.update(kwargs)

    monkeypatch.setattr(asyncpg, "create_pool", create_pool)
    await connection.create_pool(
        "postgresql://unused",
        connection.session_settings(None),
        min_size=1,
        max_size=1,
        statement_timeout_ms=1,
    )
    return captured


async def test_the_pooler_carries_the_retrievers_connections(
    with_cluster: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = cluster_of(with_cluster)
    poolers = [
        p for p in with_cluster.all("Pooler") if p["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    ]
    assert poolers, with_cluster.name
    pool_kwargs = await _retriever_startup_parameters(monkeypatch)
    statement_cache = pool_kwargs.get(
        "statement_cache_size", inspect.signature(asyncpg.connect).parameters["statement_cache_size"].default
    )
    max_connections = int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
    names = certificate_names(with_cluster, cluster)
    for pooler in poolers:
        where = f"{with_cluster.name}: Pooler {pooler['metadata']['name']}"
        assert service_host(with_cluster, pooler["metadata"]["name"]) in names, (
            f"{where}: not on the certificate"
        )
        if pooler["spec"]["pgbouncer"].get("poolMode", "session") == "transaction":
            # asyncpg prepares each statement by name and caches them per connection.
            assert int(_pgbouncer_parameter(pooler, "max_prepared_statements") or 0) >= statement_cache, where
        # PgBouncer refuses a startup parameter it neither tracks nor ignores, in every pool mode.
        accepted = (
            PGBOUNCER_TRACKED
            | _listed(_pgbouncer_parameter(pooler, "ignore_startup_parameters"))
            | _listed(_pgbouncer_parameter(pooler, "track_extra_parameters"))
        )
        refused = {p.lower() for p in pool_kwargs["server_settings"]} - accepted
        assert not refused, f"{where}: PgBouncer would refuse the retriever's {sorted(refused)}"
        server_connections = pooler["spec"].get("instances", 1) * int(
            _pgbouncer_parameter(pooler, "default_pool_size") or 20
        )
        assert server_connections <= max_connections - POSTGRES_RESERVED_CONNECTIONS, where


def _rules_admitting(render: Rendered, labels: dict[str, str], port: int) -> Iterator[Manifest]:
    for policy in render.all("NetworkPolicy"):
        if "Ingress" in policy["spec"].get("policyTypes", ["Ingress"]) and selects_by_expression(
            policy["spec"]["podSelector"], labels
        ):
            yield from (rule for rule in policy["spec"].get("ingress", []) if port_allowed(rule, port, "TCP"))


def test_network_policies_admit_what_the_cluster_uses(with_cluster: Rendered) -> None:
    cluster = cluster_of(with_cluster)
    instance = instance_labels(cluster)
    where = with_cluster.name
    labels = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in with_cluster.workloads()
    }
    # The retriever and the Job reach the database, nothing else of the platform does.
    for client in (RETRIEVER.name, DATABASE_SETUP):
        assert allowed(with_cluster, labels[client], instance, POSTGRES_PORT), (
            f"{where}: {client} -> database"
        )
    for other in labels.keys() - {RETRIEVER.name, DATABASE_SETUP}:
        assert not allowed(with_cluster, labels[other], instance, POSTGRES_PORT), (
            f"{where}: {other} -> database"
        )
    # Streaming replication between the instances, PgBouncer to the primary.
    pooler = {"cnpg.io/cluster": cluster["metadata"]["name"], "cnpg.io/podRole": "pooler"}
    assert allowed(with_cluster, instance, instance, POSTGRES_PORT), f"{where}: replication"
    assert allowed(with_cluster, pooler, instance, POSTGRES_PORT), f"{where}: pooler -> primary"
    assert allowed(with_cluster, labels[RETRIEVER.name], pooler, POSTGRES_PORT), (
        f"{where}: retriever -> pooler"
    )
    # The Kubernetes API (and object storage) over HTTPS, and DNS.
    for port in (443, 6443):
        assert allowed(with_cluster, instance, None, port), f"{where}: instance -> :{port}"
    assert allowed(with_cluster, instance, None, 53, "UDP"), f"{where}: instance -> DNS"
    # The operator in its namespace (status port 8000), Prometheus in its own (exporter 9187).
    for port, namespace in ((8000, "cnpg-system"), (9187, "monitoring")):
        peers = [p for rule in _rules_admitting(with_cluster, instance, port) for p in rule.get("from", [{}])]
        assert any(
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == namespace
            for p in peers
        ), f"{where}: nothing admits {namespace} to port {port}"
    assert cluster["spec"]["monitoring"]["enablePodMonitor"] is True, where
