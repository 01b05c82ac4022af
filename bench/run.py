"""Run the benchmark: K chats at once through the project, then through the reference relay.

    python -m bench.run --k 200 --tokens 200 --rate 40 --idle-sockets 500 --json out.json
    python -m bench.run --k 200 --sse      # the project over SSE too, against the same server
    python -m bench.run --k 200 --processes 2   # two processes, each reply watched from the other

Starts the test model server at the set pace, then the project under daphne (one process,
SQLite in a temporary folder), then the reference relay under daphne, measures each in
turn, prints one Markdown table and stops everything it started, whatever happens. With
`--sse`, K more chats then stream their replies over SSE from the same project server,
and a second table sets their figures beside the websocket's. With `--processes 2`, two
project processes share the database and a Redis (`bench.two_processes`), and each reply
is watched from a tab on the process that does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp

from bench import chats, event_streams, redis_counts, report, two_processes
from bench.processes import (
    HOST,
    ROOT,
    Child,
    cpu_seconds,
    free_port,
    machine,
    main_thread_cpu_seconds,
    py_spy,
    python,
    rss_kib,
    run_python,
)
from tests.llm_server import expected_text

# bench.probe_asgi.STATS_PATH; not imported, since importing that module sets Django up.
STATS_PATH = "/__bench__/stats"
MODEL = "test-model"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--k", type=int, default=200, help="chats at once (200)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply (200)")
    parser.add_argument("--rate", type=float, default=40.0, help="tokens per second (40)")
    parser.add_argument(
        "--idle-sockets", type=int, default=500, help="idle sockets for the memory figure (500)"
    )
    parser.add_argument("--skip-reference", action="store_true", help="measure only ours")
    parser.add_argument(
        "--sse", action="store_true", help="then K chats over SSE, against the same server"
    )
    parser.add_argument(
        "--processes",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: two project processes on one database and Redis, each reply watched from "
        "the other (no idle sockets, no SSE)",
    )
    parser.add_argument(
        "--redis-url",
        help="with --processes 2: this Redis database (flushed first) instead of a "
        "redis-server of the benchmark's own",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        help="folder for py-spy profiles (raw) of the set-ups and the replies (with "
        "--processes 2: of both processes during the replies)",
    )
    args = parser.parse_args(argv)
    if args.k < 1 or args.tokens < 1 or args.rate <= 0 or args.idle_sockets < 0:
        parser.error("--k and --tokens must be at least 1, --rate above 0")
    return args


# --- Environments -------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """This environment, without what would point a child at another database or layer."""
    env = dict(os.environ)
    for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "DJANGO_DEBUG"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def project_env(folder: Path, model_url: str) -> dict[str, str]:
    return {
        **base_env(),
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DATABASE_URL": f"sqlite:///{folder / 'bench.sqlite3'}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(32),
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_LOG_LEVEL": "WARNING",
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "bench",
        "CHAT_MODELS": MODEL,
        "CHAT_MESSAGES_PER_MINUTE": "1000000",
        # The idle sockets are all one user's.
        "CHAT_SOCKETS_PER_USER": "1000000",
        "CHAT_TOKENS_PER_DAY": "0",
        # Every chat here is a conversation's first reply: its title request (one more
        # request, an UPDATE and a frame) would come as the replies end, partly inside
        # the measured window. The benchmark measures the replies; titles stay off.
        "CHAT_GENERATE_TITLES": "0",
    }


def reference_env(model_url: str) -> dict[str, str]:
    return {**base_env(), "OPENAI_BASE_URL": model_url, "OPENAI_API_KEY": "bench"}


def daphne(name: str, application: str, env: dict[str, str], folder: Path) -> tuple[Child, str]:
    port = free_port()
    argv = python("-m", "daphne", "-b", HOST, "-p", str(port), application)
    return Child(name, argv, env, folder), f"http://{HOST}:{port}"


# --- Measuring one target -----------------------------------------------------------------


class Probe:
    """What is read from the server around each phase: its CPU, and its SQL count if any."""

    def __init__(self, http: aiohttp.ClientSession, pid: int, stats_url: str | None) -> None:
        self.http, self.pid, self.stats_url = http, pid, stats_url

    async def queries(self) -> int | None:
        if self.stats_url is None:
            return None
        async with asyncio.timeout(10), self.http.get(self.stats_url) as response:
            count: int = (await response.json())["queries"]
            return count

    async def read(self) -> tuple[float, int | None]:
        return cpu_seconds(self.pid), await self.queries()


def per(delta: float | None, count: int) -> float | None:
    return delta / count if delta is not None and count else None


async def idle_memory(
    http: aiohttp.ClientSession, endpoint: chats.Endpoint, n: int, pid: int
) -> float:
    """KiB of the server's RSS per open socket that does nothing."""
    before = rss_kib(pid)
    opened = await chats.connect(http, [endpoint] * n)
    sockets = [s for s in opened if isinstance(s, chats.Chat)]
    if len(sockets) < n:
        failure = next(s for s in opened if isinstance(s, Exception))
        raise RuntimeError(f"{n - len(sockets)} idle sockets failed: {failure!r}")
    await asyncio.sleep(1.0)  # let the server finish with every handshake
    after = rss_kib(pid)
    await chats.close_all(sockets)
    await asyncio.sleep(0.5)
    return (after - before) / n


async def measure(
    args: argparse.Namespace,
    target: chats.Target,
    server: Child,
    model: Child,
    stats_url: str | None,
    profile: Path | None,
) -> tuple[report.Measures, list[chats.Reply]]:
    """One chat alone, then idle sockets, then K set-ups, then K replies at once."""
    measures = report.Measures()
    expected = expected_text(args.tokens)
    timeout = 60 + 10 * args.tokens / args.rate
    connector = aiohttp.TCPConnector(limit=0)
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:
        probe = Probe(http, server.pid, stats_url)
        # One chat alone, the yardstick; it warms the server too.
        [alone] = await chats.set_up(http, target, [args.k])
        if isinstance(alone, Exception):
            raise RuntimeError(f"the first chat could not start: {alone!r}")
        measures.alone_s, [reply] = await chats.chat_at_once([alone], timeout)
        if error := report.reply_error(reply, expected):
            raise RuntimeError(f"the first chat failed: {error}")
        if args.idle_sockets:
            measures.idle_kib = await idle_memory(
                http, alone.endpoint, args.idle_sockets, server.pid
            )
        async with profiling(server, profile, "setup"):
            sockets, failed = await set_up_all(http, target, args.k, probe, measures)
        await asyncio.sleep(0.5)
        async with profiling(server, profile, "replies"):
            at_once = chats.chat_at_once(sockets, timeout)
            replies = await reply_all(at_once, expected, probe, model, measures)
        await chats.close_all([*sockets, alone])

    measures.errors += len(failed)
    measures.error_samples = (failed + measures.error_samples)[:5]
    return measures, replies


async def set_up_all(
    http: aiohttp.ClientSession,
    target: chats.Target,
    k: int,
    probe: Probe,
    measures: report.Measures,
) -> tuple[list[chats.Chat], list[str]]:
    """K chats made and connected, with the server's CPU and queries for it."""
    cpu, queries = await probe.read()
    made = await chats.new_chats(http, target, range(k))
    cpu_made = cpu_seconds(probe.pid)
    ready = await chats.connect(http, [e for e in made if isinstance(e, chats.Endpoint)])
    cpu_after, queries_after = await probe.read()
    if target.creates_conversations:
        measures.create_cpu_ms = (cpu_made - cpu) * 1000 / k
    measures.connect_cpu_ms = (cpu_after - cpu_made) * 1000 / k
    measures.setup_cpu_ms = (cpu_after - cpu) * 1000 / k
    measures.queries_per_setup = per(_minus(queries_after, queries), k)
    sockets = [chat for chat in ready if isinstance(chat, chats.Chat)]
    failed = [repr(e) for e in [*made, *ready] if isinstance(e, Exception)]
    return sockets, failed


async def reply_all(
    at_once: Awaitable[tuple[float, list[chats.Reply]]],
    expected: str,
    probe: Probe,
    model: Child,
    measures: report.Measures,
) -> list[chats.Reply]:
    """Every chat sends at once (`at_once`, a `chat_at_once`); the CPU of each process and
    the server's queries meanwhile."""
    cpu, queries = await probe.read()
    loop_cpu = main_thread_cpu_seconds(probe.pid)
    model_cpu, client_cpu = cpu_seconds(model.pid), time.process_time()
    measures.wall_s, replies = await at_once
    cpu_after, queries_after = await probe.read()
    report.reply_figures(measures, replies, expected)
    measures.server_cpu_s = cpu_after - cpu
    measures.cpu_per_token_us = per(measures.server_cpu_s * 1e6, measures.tokens_relayed)
    measures.loop_cpu_s = main_thread_cpu_seconds(probe.pid) - loop_cpu
    measures.model_server_cpu_s = cpu_seconds(model.pid) - model_cpu
    measures.client_cpu_s = time.process_time() - client_cpu
    measures.wall_ratio = report.ratio(measures.wall_s, measures.alone_s)
    measures.queries_per_reply = per(_minus(queries_after, queries), len(replies))
    return replies


async def measure_sse(
    args: argparse.Namespace,
    target: chats.Project,
    server: Child,
    model: Child,
    stats_url: str,
    profile: Path | None,
) -> tuple[report.Measures, list[chats.Reply]]:
    """As `measure`, each reply streamed over SSE: one chat alone, then K set-ups (a
    conversation each, on a connection of its own), then K messages posted at once."""
    measures = report.Measures()
    expected = expected_text(args.tokens)
    timeout = 60 + 10 * args.tokens / args.rate
    opened: list[event_streams.StreamChat] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        probe = Probe(http, server.pid, stats_url)
        try:
            alone = await event_streams.new_chat(target, args.k)
            opened.append(alone)
            measures.alone_s, [reply] = await event_streams.chat_at_once([alone], target, timeout)
            if error := report.reply_error(reply, expected):
                raise RuntimeError(f"the first SSE chat failed: {error}")
            async with profiling(server, profile, "sse-setup"):
                ready, failed = await sse_set_up_all(target, args.k, probe, measures)
            opened += ready
            await asyncio.sleep(0.5)
            async with profiling(server, profile, "sse-replies"):
                at_once = event_streams.chat_at_once(ready, target, timeout)
                replies = await reply_all(at_once, expected, probe, model, measures)
        finally:
            await event_streams.close_all(opened)
    measures.errors += len(failed)
    measures.error_samples = (failed + measures.error_samples)[:5]
    return measures, replies


async def sse_set_up_all(
    target: chats.Project, k: int, probe: Probe, measures: report.Measures
) -> tuple[list[event_streams.StreamChat], list[str]]:
    """K conversations made, each on its own connection, with the server's CPU and queries."""
    cpu, queries = await probe.read()
    made = await event_streams.new_chats(target, range(k))
    cpu_after, queries_after = await probe.read()
    measures.setup_cpu_ms = measures.create_cpu_ms = (cpu_after - cpu) * 1000 / k
    measures.queries_per_setup = per(_minus(queries_after, queries), k)
    ready = [chat for chat in made if isinstance(chat, event_streams.StreamChat)]
    return ready, [repr(e) for e in made if isinstance(e, Exception)]


@contextlib.asynccontextmanager
async def profiling(server: Child, folder: Path | None, phase: str) -> AsyncIterator[None]:
    """Record the server with py-spy while the block runs, if profiles were asked for."""
    if folder is None:
        yield
        return
    output = folder / f"{server.name}-{phase}.txt"
    with py_spy(server.pid, output, server.env, server.log_path.parent) as recorder:
        await asyncio.sleep(1.0)  # py-spy attaches
        yield
        recorder.stop(timeout=30, signum=signal.SIGINT)  # SIGINT: py-spy writes the file


def _minus(a: int | None, b: int | None) -> float | None:
    return a - b if a is not None and b is not None else None


def measure_project(
    args: argparse.Namespace, folder: Path, model: Child, model_url: str
) -> tuple[report.Measures, report.Measures | None]:
    """The project over websockets, then (with `--sse`) over SSE: its figures for each."""
    env = project_env(folder, model_url)
    run_python(["manage.py", "migrate", "--no-input", "--verbosity", "0"], env)
    accounts = json.loads(
        run_python(["-m", "bench.database", "sessions", str(args.k + 1)], env).stdout
    )
    server, base_url = daphne("project", "bench.probe_asgi:application", env, folder)
    with server:
        server.wait_for_port(int(base_url.rsplit(":", 1)[1]))
        target = chats.Project(base_url, accounts["cookie_name"], accounts["sessions"])
        stats_url = base_url + STATS_PATH
        measures, replies = asyncio.run(
            measure(args, target, server, model, stats_url, args.profile)
        )
        over_sse, sse_replies = (
            asyncio.run(measure_sse(args, target, server, model, stats_url, args.profile))
            if args.sse
            else (None, [])
        )
    stored = json.loads(run_python(["-m", "bench.database", "replies"], env).stdout)
    measures.wrong_texts = sum(1 for reply in replies if _stored_differs(reply, stored))
    if over_sse is not None:
        over_sse.wrong_texts = sum(1 for reply in sse_replies if _stored_differs(reply, stored))
    return measures, over_sse


def _stored_differs(reply: chats.Reply, stored: dict[str, dict[str, str]]) -> bool:
    row = stored.get(reply.conversation_id or "")
    return row is None or row["content"] != reply.text or row["status"] != reply.status


def measure_reference(
    args: argparse.Namespace, folder: Path, model: Child, model_url: str
) -> report.Measures:
    server, base_url = daphne(
        "reference", "bench.reference_relay:application", reference_env(model_url), folder
    )
    with server:
        server.wait_for_port(int(base_url.rsplit(":", 1)[1]))
        target = chats.Reference(base_url)
        measures, _ = asyncio.run(measure(args, target, server, model, None, args.profile))
    return measures


# --- The whole run ------------------------------------------------------------------------


def benchmark(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    port = free_port()
    model_argv = ["-m", "tests.llm_server", "--port", str(port)]
    model_argv += ["--tokens", str(args.tokens), "--rate", str(args.rate)]
    with Child("model", python(*model_argv), base_env(), folder) as model:
        model.wait_for_port(port)
        model_url = f"http://{HOST}:{port}/v1"
        if args.processes == 2:
            return benchmark_two(args, folder, model, model_url)
        ours, over_sse = measure_project(args, folder, model, model_url)
        reference = (
            None if args.skip_reference else measure_reference(args, folder, model, model_url)
        )
    return {
        "config": {
            "k": args.k,
            "tokens": args.tokens,
            "rate": args.rate,
            "idle_sockets": args.idle_sockets,
        },
        "machine": machine(),
        "ours": ours.as_json(),
        "reference": reference.as_json() if reference else None,
        "ratios": {
            "wall": report.ratio(ours.wall_s, reference.wall_s if reference else None),
            "cpu_per_token": report.ratio(
                ours.cpu_per_token_us, reference.cpu_per_token_us if reference else None
            ),
        },
        "targets_met": report.targets_met(ours, reference),
        "table": report.table(ours, reference),
        # The same project over SSE, set beside its websocket figures from the same run.
        "sse": over_sse.as_json() if over_sse else None,
        "sse_ratios": {
            "cpu_per_token": report.ratio(
                over_sse.cpu_per_token_us if over_sse else None, ours.cpu_per_token_us
            ),
        },
        "sse_targets_met": report.sse_targets_met(over_sse, ours) if over_sse else None,
        "sse_table": report.sse_table(over_sse, ours) if over_sse else None,
    }


def benchmark_two(
    args: argparse.Namespace, folder: Path, model: Child, model_url: str
) -> dict[str, Any]:
    """Two project processes on one SQLite file and one Redis, then the reference relay."""
    args.idle_sockets = 0  # the reference's idle-socket figure has nothing to match here
    with redis_counts.redis_server(args.redis_url, folder) as redis_url:
        env = {**project_env(folder, model_url), "REDIS_URL": redis_url}
        ours = two_processes.measure_project(args, folder, model, env)
    reference = None if args.skip_reference else measure_reference(args, folder, model, model_url)
    return two_processes.result(args, ours, reference, args.redis_url)


def headline(result: dict[str, Any]) -> str:
    if result["config"].get("processes") == 2:
        return two_processes.headline(result)
    config, host = result["config"], result["machine"]
    return (
        f"K={config['k']} chats at once, {config['tokens']} tokens per reply at "
        f"{config['rate']:g} tokens/s, {config['idle_sockets']} idle sockets; "
        f"{host['cpus']} x {host['cpu_model']}, Python {host['python']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, through every `finally` that stops a child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as folder:
        try:
            result = benchmark(args, Path(folder))
        except KeyboardInterrupt:
            print("interrupted; everything started is stopped", file=sys.stderr)
            return 130
        except Exception:
            for log in sorted(Path(folder).glob("*.log")):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                print(f"--- {log.name}\n{tail}", file=sys.stderr)
            raise
    print(headline(result))
    print()
    print(result["table"])
    if result.get("sse_table"):
        print()
        print("The project over SSE, against its websocket figures above:")
        print()
        print(result["sse_table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
