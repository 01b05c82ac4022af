"""Serve the app with daphne; with no endpoint configured, run the bundled local model too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import local_model

# Where `openai.AsyncOpenAI` goes when given no base_url (and OPENAI_BASE_URL is unset).
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class Command(BaseCommand):
    help = (
        "Serve on daphne. Without OPENAI_API_KEY or OPENAI_BASE_URL, first start the "
        "bundled offline model (SmolLM2 on llama.cpp) and point the app at it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        env = dict(os.environ)
        model_server = None
        if not (settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL):
            model_server = self.start_local_model(env)
        daphne = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port)]
        self.describe_model(env, local=model_server is not None)
        self.stdout.write(self.style.SUCCESS(f"Serving on http://{host}:{port}/"))
        self.stdout.flush()  # before daphne's own output, even into a pipe
        server = subprocess.Popen([*daphne, "chatsite.asgi:application"], env=env)  # noqa: S603
        # Ctrl-C reaches the whole process group; on SIGTERM, pass it on and wait.
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            server.wait()
        except KeyboardInterrupt:
            server.wait()
        finally:
            if model_server is not None:
                model_server.stop()

    def describe_model(self, env: dict[str, str], *, local: bool) -> None:
        """Say which endpoint and models the app will use: an endpoint that cannot be
        reached otherwise shows only as failed replies."""
        base_url = env.get("OPENAI_BASE_URL", "")
        if local:
            endpoint = f"{base_url} (the bundled local model, offline)"
        elif base_url:
            endpoint = f"{base_url} (OPENAI_BASE_URL)"
        else:
            endpoint = f"{OPENAI_DEFAULT_URL} (OPENAI_BASE_URL unset: the openai SDK's default)"
        models = [local_model.MODEL_NAME] if local else list(settings.CHAT_MODELS)
        self.stdout.write(f"Model endpoint: {endpoint}")
        self.stdout.write(f"Models (CHAT_MODELS, the first is the default): {', '.join(models)}")

    def start_local_model(self, env: dict[str, str]) -> local_model.LocalModelServer:
        if not local_model.installed():
            raise CommandError(
                "No model endpoint is configured and the local model is not installed: "
                "run `make run` (it installs it), or set OPENAI_BASE_URL / OPENAI_API_KEY."
            )
        server = local_model.LocalModelServer()
        server.start(progress=self.stdout.write)
        env.update(
            OPENAI_BASE_URL=server.base_url,
            CHAT_LOCAL_MODEL="1",
            CHAT_MODELS=local_model.MODEL_NAME,
            # llama.cpp serves one request at a time in a 2048-token context.
            CHAT_UPSTREAM_CONCURRENCY=env.get("CHAT_UPSTREAM_CONCURRENCY", "1"),
            CHAT_CONTEXT_TOKENS=env.get("CHAT_CONTEXT_TOKENS", str(local_model.PROMPT_BUDGET)),
            CHAT_MAX_REPLY_TOKENS=env.get("CHAT_MAX_REPLY_TOKENS", str(local_model.REPLY_TOKENS)),
        )
        return server
