"""Validating custom resources against their CustomResourceDefinitions, offline.

The CRDs are third-party test data in ../shared/schemas/crds/ (next to the
repository; its README names their sources), never part of the product.
Validation is as strict as `kubectl apply --validate=strict`: besides types,
enums and required fields, a field the schema does not declare is an error, where
the API server would otherwise prune it silently (a misspelt `podMetricEndpoints`
would leave a PodMonitor that scrapes nothing).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

# jsonschema (a dependency of kubernetes-validate) ships no type hints.
import jsonschema  # type: ignore[import-untyped]
import yaml

from tests.k8s.rendering import REPO, Manifest

CRD_DIR = REPO.parent / "shared" / "schemas" / "crds"

Schema = dict[str, Any]


def closed(schema: Schema) -> Schema:
    """A copy of an OpenAPI v3 schema in which objects with declared properties accept no others."""
    schema = copy.deepcopy(schema)
    _close(schema)
    return schema


def _close(schema: Any) -> None:
    if not isinstance(schema, dict):
        return
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    for child in (schema.get("properties") or {}).values():
        _close(child)
    for key in ("items", "additionalProperties", "not"):
        _close(schema.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        for child in schema.get(key) or []:
            _close(child)


def load_crd_schemas(directory: Path = CRD_DIR) -> dict[tuple[str, str], Schema]:
    """Every served version's schema in the directory, by (apiVersion, kind), closed."""
    assert directory.is_dir(), f"no CRD schemas at {directory} (the shared test data next to the repository)"
    schemas: dict[tuple[str, str], Schema] = {}
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schemas[f"{group}/{version['name']}", kind] = closed(version["schema"]["openAPIV3Schema"])
    return schemas


def crd_errors(obj: Manifest, schemas: dict[tuple[str, str], Schema]) -> list[str]:
    """What the object's CRD rejects, one message per error with its path; no CRD is an error too."""
    name = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    schema = schemas.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    if schema is None:
        return [f"{name}: no CRD for {obj.get('apiVersion')} {obj.get('kind')} in {CRD_DIR}"]
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{name}: {'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]
