"""Credentials: the gateway's API keys and every service's inner-auth key come from Secrets, and
outside the dev overlay's placeholders no Secret, and no password, comes from git."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.keys import hash_key, key_id_of, read_keys
from services.common.internal_auth import key_file_variable, read_key
from tests.k8s.credentials import (
    API_KEYS_KEY,
    API_KEYS_SECRET,
    INTERNAL_AUTH_KEY,
    INTERNAL_AUTH_SECRET,
    SecretFile,
    secret_file,
)
from tests.k8s.objects import only_container, secret_values, service_env
from tests.k8s.rendering import REPO, Manifest, Rendered, vk
from tests.k8s.services import SERVICES, ServiceSpec, for_each_service

DEV_OVERLAY = "overlays/dev"
# A URL with a password in it: postgresql://user:password@host/...
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# The password the base once shipped; never again outside the dev overlay's placeholders.
OLD_PLACEHOLDER = "change-me"


def test_gateway_reads_its_api_keys_from_the_secret(render: Rendered) -> None:
    deployment = render.one("Deployment", "gateway")
    env = service_env(render, SERVICES["gateway"])
    path = env.get("GATEWAY_API_KEYS_FILE")
    assert path, f"{render.name}: no GATEWAY_API_KEYS_FILE: the gateway would refuse to start"
    # Mounted as a directory, not a subPath file: a revoked key must reach the running gateway.
    assert secret_file(deployment, only_container(deployment), path) == SecretFile(
        API_KEYS_SECRET, API_KEYS_KEY, sub_path=False
    ), f"{render.name}: {path} is not {API_KEYS_SECRET}/{API_KEYS_KEY}"
    assert "GATEWAY_ALLOW_UNAUTHENTICATED" not in env, f"{render.name}: authentication must stay on"


@for_each_service
def test_every_service_reads_the_internal_auth_key(render: Rendered, service: ServiceSpec) -> None:
    deployment = render.one("Deployment", service.name)
    variable = key_file_variable(service.env_prefix)
    path = service_env(render, service).get(variable)
    assert path, f"{render.name}: {service.name} has no {variable}: it would refuse to start"
    source = secret_file(deployment, only_container(deployment), path)
    assert source is not None, f"{render.name}: {service.name}: {path} is on no Secret volume"
    assert (source.secret, source.key) == (INTERNAL_AUTH_SECRET, INTERNAL_AUTH_KEY), render.name


def _plain_values(obj: Manifest) -> list[str]:
    """What an object shows in clear outside Secrets: ConfigMap data and literal env values."""
    if obj["kind"] == "ConfigMap":
        return [str(v) for v in (obj.get("data") or {}).values()]
    template = obj.get("spec", {}).get("template", {}).get("spec", {})
    containers = template.get("containers", []) + template.get("initContainers", [])
    return [str(item["value"]) for c in containers for item in c.get("env", []) if "value" in item]


def _assert_no_credentials_from_git(name: str, objects: list[Manifest]) -> None:
    secrets = [o["metadata"]["name"] for o in objects if o["kind"] == "Secret"]
    assert not secrets, f"{name} renders Secrets {secrets}: `kubectl apply` would overwrite the real ones"
    for obj in objects:
        for value in _plain_values(obj):
            assert not URL_WITH_PASSWORD.search(value), f"{name}: a password in {obj['metadata']['name']}"
            assert OLD_PLACEHOLDER not in value, f"{name}: {OLD_PLACEHOLDER!r} in {obj['metadata']['name']}"


def test_base_holds_no_credentials() -> None:
    objects = vk.find_kustomize().build(vk.Render(REPO / "k8s" / "base"))
    _assert_no_credentials_from_git("k8s/base", objects)


def test_no_credentials_from_git_outside_the_dev_overlay(render: Rendered) -> None:
    if render.name.startswith(DEV_OVERLAY):
        # Its Secrets are placeholders; a password still never stands outside one.
        _assert_no_credentials_from_git(render.name, [o for o in render.objects if o["kind"] != "Secret"])
    else:
        _assert_no_credentials_from_git(render.name, render.objects)


def test_dev_placeholder_api_key_is_in_its_keys_file(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """The key the dev overlay's kustomization.yaml tells developers to use works with its keys file."""
    kustomization = (REPO / "k8s" / DEV_OVERLAY / "kustomization.yaml").read_text()
    documented = re.search(r"--api-key (\S+)", kustomization)
    assert documented, "the dev overlay no longer says which API key to use"
    key = documented[1]
    keys_file = tmp_path / API_KEYS_KEY
    keys_file.write_text(secret_values(rendered[DEV_OVERLAY].one("Secret", API_KEYS_SECRET))[API_KEYS_KEY])
    entry = read_keys(keys_file).get(key_id_of(key) or "")
    assert entry is not None, f"no entry for {key} in the dev keys file"
    assert entry.sha256 == hash_key(key)
    assert not entry.revoked


def test_dev_placeholder_internal_auth_key_is_long_enough(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    key_file = tmp_path / INTERNAL_AUTH_KEY
    secret = rendered[DEV_OVERLAY].one("Secret", INTERNAL_AUTH_SECRET)
    key_file.write_text(secret_values(secret)[INTERNAL_AUTH_KEY])
    read_key(key_file, INTERNAL_AUTH_SECRET)  # raises, as the services would, on a short key
