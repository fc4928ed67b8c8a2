"""The database: the retriever connects as its own role, not the superuser; a Job creates that role
with the admin credentials, which no service holds; an external database is reached over TLS that
verifies the server (asyncpg reads libpq's PGSSLMODE and PGSSLROOTCERT). With the cloudnative-pg
component the admin credentials are the Cluster's superuser's, which its operator generates
(tests/k8s/test_cloudnative_pg.py checks that wiring in full)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from services.common.registry import RETRIEVER
from services.retriever.database_setup import ADMIN_URL_VARIABLE
from services.retriever.role_password import PASSWORD_FILE_VARIABLE
from services.retriever.schema import RETRIEVER_ROLE, SETUP_COMMAND
from tests.k8s.credentials import (
    DATABASE_SECRET,
    POSTGRES_CA_KEY,
    POSTGRES_CA_SECRET,
    SecretFile,
    secret_file,
)
from tests.k8s.objects import only_container, pod_spec, secret_key_ref, secret_values, workload_env
from tests.k8s.rendering import Manifest, Rendered
from tests.k8s.services import DATABASE_SETUP, POSTGRES_PORT

# Keys of the Secret rag-database (README "Deploying on Kubernetes").
RETRIEVER_DSN = "DATABASE_URL"
RETRIEVER_PASSWORD = "RETRIEVER_PASSWORD"
ADMIN_DSN = "ADMIN_DATABASE_URL"
ADMIN_KEYS = {ADMIN_DSN, "POSTGRES_PASSWORD"}


def _database_keys_read(workload: Manifest) -> set[str]:
    """The keys of rag-database the workload's pods can read ("*": all of them)."""
    keys: set[str] = set()
    pod = pod_spec(workload)
    for container in pod["containers"]:
        if any(s.get("secretRef", {}).get("name") == DATABASE_SECRET for s in container.get("envFrom", [])):
            keys.add("*")
        refs = (secret_key_ref(container, item["name"]) for item in container.get("env", []))
        keys.update(key for secret, key in filter(None, refs) if secret == DATABASE_SECRET)
    for volume in pod.get("volumes", []):
        if volume.get("secret", {}).get("secretName") == DATABASE_SECRET:
            keys.update(item["key"] for item in volume["secret"].get("items", [{"key": "*"}]))
    return keys


def _cluster_superuser_secret(render: Rendered) -> str | None:
    """The Secret of a CloudNativePG Cluster's superuser, which its operator generates; None without one."""
    clusters = render.all("Cluster")
    return f"{clusters[0]['metadata']['name']}-superuser" if clusters else None


def _reads_secret(workload: Manifest, secret: str | None) -> bool:
    pod = pod_spec(workload)
    refs = (
        item.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        for container in pod["containers"]
        for item in container.get("env", [])
    )
    volumes = (volume.get("secret", {}).get("secretName") for volume in pod.get("volumes", []))
    return secret is not None and secret in {*refs, *volumes}


def test_only_the_setup_job_and_postgres_hold_the_admin_credentials(render: Rendered) -> None:
    superuser = _cluster_superuser_secret(render)
    readers = {
        workload["metadata"]["name"]
        for workload in render.workloads()
        if _database_keys_read(workload) & (ADMIN_KEYS | {"*"}) or _reads_secret(workload, superuser)
    }
    assert DATABASE_SETUP in readers, render.name
    # PostgreSQL's own container sets the superuser's password on first start.
    assert readers <= {DATABASE_SETUP, "postgres"}, f"{render.name}: {readers} read the admin credentials"


def test_retriever_connects_as_its_own_role(render: Rendered) -> None:
    deployment = render.one("Deployment", RETRIEVER.name)
    container = only_container(deployment)
    if render.all("Cluster"):
        # A URL with no password, which PGPASSWORD holds: the one the Job sets.
        dsn = urlsplit(workload_env(render, deployment)["DATABASE_URL"])
        assert (dsn.username, dsn.password) == (RETRIEVER_ROLE, None), render.name
        assert secret_key_ref(container, "PGPASSWORD") == (DATABASE_SECRET, RETRIEVER_PASSWORD), render.name
        return
    assert secret_key_ref(container, "DATABASE_URL") == (DATABASE_SECRET, RETRIEVER_DSN), render.name
    secret = render.get("Secret", DATABASE_SECRET)
    if secret is None:
        return  # created out of band
    values = secret_values(secret)
    dsn = urlsplit(values[RETRIEVER_DSN])
    admin = urlsplit(values[ADMIN_DSN])
    assert dsn.username == RETRIEVER_ROLE, f"{render.name}: the retriever logs in as {dsn.username}"
    assert unquote(dsn.password or "") == values[RETRIEVER_PASSWORD], "the Job sets another password"
    assert (admin.username, unquote(admin.password or "")) == (
        values["POSTGRES_USER"],
        values["POSTGRES_PASSWORD"],
    ), "the Job's admin DSN is not the superuser initdb creates"
    host = f"postgres.{render.namespace}.svc.cluster.local"
    for url in (dsn, admin):
        assert (url.hostname, url.port, url.path) == (host, POSTGRES_PORT, f"/{values['POSTGRES_DB']}")


def test_setup_job_creates_the_role_with_the_admin_credentials(render: Rendered) -> None:
    job = render.one("Job", DATABASE_SETUP)
    retriever = render.one("Deployment", RETRIEVER.name)
    container = only_container(job)
    assert container.get("command") == SETUP_COMMAND.split(), render.name
    # The same code, and schema version, as the retriever that migrates afterwards.
    assert container["image"] == only_container(retriever)["image"], render.name
    superuser = _cluster_superuser_secret(render)
    if superuser is None:
        assert secret_key_ref(container, ADMIN_URL_VARIABLE) == (DATABASE_SECRET, ADMIN_DSN), render.name
    else:
        assert secret_key_ref(container, "PGPASSWORD") == (superuser, "password"), render.name
    password_file = workload_env(render, job).get(PASSWORD_FILE_VARIABLE, "")
    assert secret_file(job, container, password_file) == SecretFile(
        DATABASE_SECRET, RETRIEVER_PASSWORD, sub_path=False
    ), f"{render.name}: {password_file} is not {DATABASE_SECRET}/{RETRIEVER_PASSWORD}"
    # Removed after a while, so that the next `kubectl apply` runs it again (it is idempotent).
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["backoffLimit"] >= 1, "PostgreSQL may still be starting on the first try"
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    # Hardened as the retriever's pods are (tests/k8s/test_security.py checks those).
    assert pod_spec(job)["securityContext"] == pod_spec(retriever)["securityContext"], render.name
    assert container["securityContext"] == only_container(retriever)["securityContext"], render.name


def test_an_external_database_is_reached_over_verified_tls(render: Rendered) -> None:
    external = render.get("StatefulSet", "postgres") is None
    for kind, name in (("Deployment", RETRIEVER.name), ("Job", DATABASE_SETUP)):
        workload = render.one(kind, name)
        env = workload_env(render, workload)
        where = f"{render.name}: {name}"
        if not external:
            # The in-cluster PostgreSQL (the pgvector image) serves no TLS.
            assert "PGSSLMODE" not in env, where
            continue
        assert env.get("PGSSLMODE") == "verify-full", where
        ca = env.get("PGSSLROOTCERT", "")
        assert secret_file(workload, only_container(workload), ca) == SecretFile(
            POSTGRES_CA_SECRET, POSTGRES_CA_KEY, sub_path=False
        ), f"{where}: PGSSLROOTCERT {ca!r} is not {POSTGRES_CA_SECRET}/{POSTGRES_CA_KEY}"
