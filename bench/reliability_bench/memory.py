"""A process's resident memory sampled through a phase, and the memory limit its Kubernetes pod gets."""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil
import yaml

K8S_BASE = Path(__file__).resolve().parents[2] / "k8s" / "base"
SAMPLE_EVERY_S = 0.02
# The binary and decimal suffixes Kubernetes takes for a memory quantity.
_MEMORY_UNITS: dict[str, int] = {
    "": 1,
    **{suffix: 1000**power for power, suffix in enumerate(("k", "M", "G", "T"), start=1)},
    **{suffix: 1024**power for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti"), start=1)},
}


def memory_limit_bytes(service: str) -> int:
    """limits.memory of the container named `service` in k8s/base/<service>.yaml's Deployment."""
    manifests: list[dict[str, Any]] = list(yaml.safe_load_all((K8S_BASE / f"{service}.yaml").read_text()))
    for manifest in manifests:
        if manifest and manifest.get("kind") == "Deployment":
            for container in manifest["spec"]["template"]["spec"]["containers"]:
                if container["name"] == service:
                    return _memory_bytes(str(container["resources"]["limits"]["memory"]))
    raise LookupError(f"no Deployment container {service!r} in {K8S_BASE / f'{service}.yaml'}")


def _memory_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    if match is None or match[2] not in _MEMORY_UNITS:
        raise ValueError(f"not a memory quantity this reads: {quantity!r}")
    return int(match[1]) * _MEMORY_UNITS[match[2]]


def tree_rss(process: psutil.Process) -> int:
    """RSS of the process and its children (the gateway's parse workers): what its container holds."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that ended meanwhile
            total += child.memory_info().rss
    return total


class PeakRss:
    """`with PeakRss(pid) as rss:` samples tree_rss every SAMPLE_EVERY_S in a thread of its own (the
    event loop is busy with the load); rss.first and rss.peak in bytes."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.first = tree_rss(self._process)
        self.peak = self.first
        self.samples = 1

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            try:
                rss = tree_rss(self._process)
            except psutil.NoSuchProcess:  # the process died: the phase says so through its calls
                return
            self.peak = max(self.peak, rss)
            self.samples += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
