"""`manage.py serve` (what `make run` runs) says at start-up which model endpoint and
models the app uses: an endpoint that cannot be reached otherwise shows only as failures."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

from django.conf import settings

from chat.management.commands.serve import OPENAI_DEFAULT_URL, Command

START_TIMEOUT = 30.0  # seconds: daphne imports the whole app on a busy machine
UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there


def read_until(process: subprocess.Popen[str], text: str) -> str:
    """The command's output up to the first line holding `text`."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} in the output:\n{seen}")


def test_serve_prints_endpoint_and_models_when_serving_starts() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "OPENAI_BASE_URL": UNREACHABLE,
        "OPENAI_API_KEY": "test-key",
        "CHAT_MODELS": "model-a,model-b",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "manage.py", "serve", "--port", "0"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = read_until(process, "Listening on TCP address")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        assert process.stdout is not None
        process.stdout.close()

    assert f"Model endpoint: {UNREACHABLE} (OPENAI_BASE_URL)\n" in output
    assert "Models (CHAT_MODELS, the first is the default): model-a, model-b\n" in output
    # Said before serving starts, so that it is on screen whatever daphne says next.
    assert output.index("Model endpoint:") < output.index("Serving on http://127.0.0.1:0/")


def test_serve_names_the_sdk_default_without_a_base_url() -> None:
    out = io.StringIO()

    Command(stdout=out).describe_model({"OPENAI_API_KEY": "sk-test"}, local=False)

    assert f"Model endpoint: {OPENAI_DEFAULT_URL} (OPENAI_BASE_URL unset" in out.getvalue()
    models = ", ".join(settings.CHAT_MODELS)
    assert f"the first is the default): {models}\n" in out.getvalue()


def test_serve_names_the_local_model() -> None:
    out = io.StringIO()
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:41234/v1", "CHAT_MODELS": "SmolLM2-135M-Instruct"}

    Command(stdout=out).describe_model(env, local=True)

    assert out.getvalue() == (
        "Model endpoint: http://127.0.0.1:41234/v1 (the bundled local model, offline)\n"
        "Models (CHAT_MODELS, the first is the default): SmolLM2-135M-Instruct\n"
    )
