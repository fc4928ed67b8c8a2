"""The Secrets the pods read, and how a file a setting names leads back to one.

No Secret comes from git outside the dev overlay, which generates placeholders
under the names production creates out of band (README "Deploying on Kubernetes").
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.k8s.objects import pod_spec
from tests.k8s.rendering import Manifest, Rendered

API_KEYS_SECRET = "rag-api-keys"
API_KEYS_KEY = "keys.json"
INTERNAL_AUTH_SECRET = "rag-internal-auth"
INTERNAL_AUTH_KEY = "key"
DATABASE_SECRET = "rag-database"
LLM_SECRET = "rag-llm"
POSTGRES_CA_SECRET = "rag-postgres-ca"
POSTGRES_CA_KEY = "ca.crt"

# Every Secret a pod may read. None is rendered by the prod overlay, nor by the
# external-postgres component, which drops the in-cluster database and its Secret.
OUT_OF_BAND_SECRETS = {
    API_KEYS_SECRET,
    INTERNAL_AUTH_SECRET,
    DATABASE_SECRET,
    LLM_SECRET,
    POSTGRES_CA_SECRET,
}


def operator_secrets(render: Rendered) -> set[str]:
    """The Secrets the CloudNativePG operator generates for each rendered Cluster: its CA, the
    database owner's credentials and, with enableSuperuserAccess, the superuser's."""
    names: set[str] = set()
    for cluster in render.all("Cluster"):
        name = cluster["metadata"]["name"]
        names |= {f"{name}-ca", f"{name}-app"}
        if cluster["spec"].get("enableSuperuserAccess"):
            names.add(f"{name}-superuser")
    return names


@dataclass(frozen=True)
class SecretFile:
    secret: str
    key: str
    # A subPath mount is a copy made at start: an updated Secret never reaches it.
    sub_path: bool


def secret_file(workload: Manifest, container: Manifest, path: str) -> SecretFile | None:
    """The Secret key whose value the container reads at `path`; None when no Secret volume holds it."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        directory = mount["mountPath"].rstrip("/")
        sub_path = "subPath" in mount
        if secret is None:
            continue
        if sub_path and path == directory:
            in_volume = mount["subPath"]
        elif not sub_path and path.startswith(f"{directory}/"):
            in_volume = path[len(directory) + 1 :]
        else:
            continue
        keys_by_path = {item["path"]: item["key"] for item in secret.get("items", [])}
        key = keys_by_path.get(in_volume) if "items" in secret else in_volume
        return None if key is None else SecretFile(secret["secretName"], key, sub_path)
    return None
