"""Service processes of a test's own, beside the session stack and sharing its database, telemetry
and inner-hop key (so the session's services take their calls, and theirs the session gateway's)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rag_cli.stack import Stack, free_port
from services.common.registry import BY_NAME, GATEWAY_UPSTREAMS, GENERATOR, upstream_target_variable


class Replicas:
    """Service processes of a test's own, named '<service>-<replica>', beside the session stack."""

    def __init__(self, session: Stack, data_dir: Path) -> None:
        self._session = session
        self._ports: dict[str, int] = {}
        self._started: list[str] = []
        # A Stack without start(): only its process bookkeeping (start, wait for SERVING, stop).
        self._processes = Stack(data_dir=data_dir, ports=self._ports, grace_period_s=1.0)
        self._processes.log_path("any").parent.mkdir(parents=True)

    def start(self, names: Sequence[str], **env: str) -> None:
        for name in names:
            service = BY_NAME[name.split("-")[0]]
            self._ports[name] = free_port()
            environment = {
                # The session's database, and OTEL_* towards its OTLP receiver.
                **self._session.shared_environment(),
                **self._processes.listening_environment(service, self._ports[name]),
                "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={name}",
                **env,
            }
            self._processes.start_service(name, service.module, environment)
            self._started.append(name)
        deadline = time.monotonic() + 180
        for name in names:
            self._processes.wait_until_serving(name, deadline)

    def start_openai_generator(self, name: str, llm_base_url: str, **env: str) -> None:
        """A generator named `name` on the openai backend, asking the LLM server at llm_base_url."""
        self.start([name], GENERATOR_BACKEND="openai", GENERATOR_OPENAI_BASE_URL=llm_base_url, **env)

    def target(self, name: str) -> str:
        return self._processes.target(name)

    def targets(self, *names: str) -> str:
        """One gRPC target listing every replica: the ipv4: scheme takes comma-separated addresses."""
        return "ipv4:" + ",".join(f"127.0.0.1:{self._ports[name]}" for name in names)

    def log_tail(self, name: str, lines: int = 20) -> str:
        return "\n".join(self._processes.log_path(name).read_text().splitlines()[-lines:])

    def kill(self, name: str) -> None:
        process = self._processes.process(name)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for name in reversed(self._started):
            self._processes.stop_service(name)


@contextmanager
def gateway_with_openai_generator(
    stack: Stack, data_dir: Path, llm_base_url: str, **settings: str
) -> Iterator[str]:
    """The target of a gateway of its own, in front of a generator on the openai backend at llm_base_url.

    The gateway uses the session stack's embedder and retriever; `settings` adds
    to or overrides both processes' environment.
    """
    processes = Replicas(stack, data_dir)
    try:
        processes.start_openai_generator("generator-openai", llm_base_url, **settings)
        targets = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
        targets[upstream_target_variable(GENERATOR)] = processes.target("generator-openai")
        processes.start(["gateway-openai"], **{**targets, **settings})
        yield processes.target("gateway-openai")
    finally:
        processes.stop()
