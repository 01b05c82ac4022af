"""Two processes of the project on one database and one Redis: each reply runs on one and
is watched by a tab of the same conversation on the other (`python -m bench.run
--processes 2`).

Chat `i` is made on process A when `i` is even, on B when odd: a tab on that process sends
the message (so the process runs the reply), and a tab of the same conversation on the
other process watches it, through the fan-out. The watching tabs are checked frame by
frame: deltas contiguous from the `state`'s seq (a `state` may come again and replaces
what was shown), none lost, none repeated, and the text equal to the stored reply. Redis
is a server of the benchmark's own on a free port (or `--redis-url`, a database flushed
first), so that its command counts and CPU are the benchmark's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench import chats, report
from bench.processes import (
    HOST,
    Child,
    cpu_seconds,
    free_port,
    machine,
    py_spy,
    python,
    run_python,
)
from bench.redis_counts import RedisCount, per_item, redis_count
from tests.llm_server import expected_text

STATS_PATH = "/__bench__/stats"  # bench.probe_asgi.STATS_PATH
CHANNELS = "chat:*:frames:*"  # chat.fanout.channel_of's; the benchmark imports no Django
IDLE_SECONDS = 2.0


# --- The two processes --------------------------------------------------------------------


@dataclass
class Process:
    name: str
    child: Child
    base_url: str
    target: chats.Project

    async def statements(self, http: aiohttp.ClientSession) -> tuple[int, int]:
        """SQL statements sent so far, and their executions (executemany: one per row)."""
        async with asyncio.timeout(10), http.get(self.base_url + STATS_PATH) as response:
            stats = await response.json()
            return int(stats["queries"]), int(stats["executions"])


@dataclass
class Pair:
    """One conversation: the tab that sends, on the process that runs the reply, and the
    tab that watches, on the other."""

    sender: chats.Chat
    watcher: chats.Chat


@dataclass
class Reading:
    """One reading of everything counted: each process's CPU and statements, Redis."""

    cpu: list[float]
    statements: list[tuple[int, int]]
    redis: RedisCount

    @property
    def queries(self) -> int:
        return sum(sent for sent, _ in self.statements)

    @property
    def executions(self) -> int:
        return sum(executed for _, executed in self.statements)


async def read_all(
    http: aiohttp.ClientSession, processes: Sequence[Process], redis: Redis
) -> Reading:
    cpu = [cpu_seconds(p.child.pid) for p in processes]
    statements = [await p.statements(http) for p in processes]
    return Reading(cpu, statements, await redis_count(redis))


EndpointPair = tuple[chats.Endpoint, chats.Endpoint]


async def make_chats(
    http: aiohttp.ClientSession, processes: Sequence[Process], users: Sequence[int]
) -> tuple[list[EndpointPair], list[str]]:
    """Chat `i` made on process `i % 2`: its tab there (the sender's) and on the other."""

    async def make(user: int) -> EndpointPair:
        runner, other = processes[user % 2], processes[1 - user % 2]
        sender = await runner.target.new_chat(http, user)
        assert sender.conversation_id is not None
        return sender, other.target.endpoint(sender.conversation_id, user)

    made = await chats.bounded([partial(make, u) for u in users], chats.CONNECT_CONCURRENCY)
    endpoints = [pair for pair in made if isinstance(pair, tuple)]
    return endpoints, [repr(e) for e in made if isinstance(e, Exception)]


async def open_pairs(
    http: aiohttp.ClientSession, endpoints: Sequence[EndpointPair]
) -> tuple[list[Pair], list[str]]:
    """Both tabs of each chat opened, each having read its `state`."""
    opened = await chats.connect(http, [e for pair in endpoints for e in pair])
    pairs: list[Pair] = []
    failed: list[str] = []
    for sender, watcher in zip(opened[::2], opened[1::2], strict=True):
        if isinstance(sender, chats.Chat) and isinstance(watcher, chats.Chat):
            pairs.append(Pair(sender, watcher))
            continue
        failed += [repr(s) for s in (sender, watcher) if isinstance(s, Exception)]
        await chats.close_all([s for s in (sender, watcher) if isinstance(s, chats.Chat)])
    return pairs, failed


# --- All at once -------------------------------------------------------------------------


async def pairs_at_once(
    pairs: Sequence[Pair],
    timeout: float,  # noqa: ASYNC109 - each reader's own
) -> tuple[float, list[chats.Reply], list[chats.Watched]]:
    """Every sending tab sends at the same instant; both tabs of each pair read to `done`."""
    loop = asyncio.get_running_loop()
    sent = [loop.create_future() for _ in pairs]
    senders = [
        asyncio.create_task(chats.read_reply(p.sender, at, timeout))
        for p, at in zip(pairs, sent, strict=True)
    ]
    watchers = [
        asyncio.create_task(chats.watch_reply(p.watcher, at, timeout))
        for p, at in zip(pairs, sent, strict=True)
    ]
    await asyncio.sleep(0)  # every reader is now waiting on its socket
    started = time.perf_counter()
    for i, (pair, at) in enumerate(zip(pairs, sent, strict=True)):
        frame = {"type": "send", "content": f"Hello {i}", "client_msg_id": str(uuid.uuid4())}
        at.set_result(time.perf_counter())
        # A send that fails: both readers see the socket end, or time out; an error each.
        with contextlib.suppress(ConnectionError):
            await pair.sender.socket.send_str(json.dumps(frame))
    sender_replies = list(await asyncio.gather(*senders))
    watched = list(await asyncio.gather(*watchers))
    ends = [r.sent_at + r.done_at for r in watched if r.done_at is not None]
    return max(ends, default=started) - started, sender_replies, watched


# --- The run ------------------------------------------------------------------------------


async def measure(
    args: Any, processes: Sequence[Process], model: Child, redis_url: str
) -> tuple[report.TwoProcesses, list[chats.Watched]]:
    """Two chats to warm both processes, then K set-ups, a second of idleness, K replies."""
    measures = report.TwoProcesses()
    expected = expected_text(args.tokens)
    timeout = 60 + 10 * args.tokens / args.rate
    connector = aiohttp.TCPConnector(limit=0)
    jar = aiohttp.DummyCookieJar()
    redis = Redis.from_url(redis_url)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:
        opened: list[chats.Chat] = []
        try:
            made, failed = await make_chats(http, processes, [args.k, args.k + 1])
            warm, failed_too = await open_pairs(http, made)
            failed += failed_too
            opened += [c for p in warm for c in (p.sender, p.watcher)]
            if failed:
                raise RuntimeError(f"the first chats could not start: {failed[0]}")
            _, _, warmed = await pairs_at_once(warm, timeout)
            if errors := [e for r in warmed if (e := watched_error(r, expected))]:
                raise RuntimeError(f"the first chats failed: {errors[0]}")

            before = await read_all(http, processes, redis)
            made, failed = await make_chats(http, processes, range(args.k))
            between = await read_all(http, processes, redis)
            pairs, failed_too = await open_pairs(http, made)
            failed += failed_too
            opened += [c for p in pairs for c in (p.sender, p.watcher)]
            after = await read_all(http, processes, redis)
            set_up_figures(measures, before, between, after, args.k)

            await asyncio.sleep(IDLE_SECONDS)  # what the open sockets cost, doing nothing
            idle = await read_all(http, processes, redis)
            measures.idle_cpu_ms_per_s = (sum(idle.cpu) - sum(after.cpu)) * 1000 / IDLE_SECONDS
            measures.redis_idle_commands_per_s = idle.redis.minus(after.redis).total / IDLE_SECONDS

            # chat.fanout's channels, named after the site's database (chat.redis_names).
            wanted = {uuid.UUID(p.sender.endpoint.conversation_id or "").hex for p in pairs}
            channels = [
                name
                for name in await redis.pubsub_channels(CHANNELS)
                if name.decode().rsplit(":", 1)[1] in wanted
            ]
            numsub = await redis.pubsub_numsub(*channels) if channels else []
            measures.subscribers_per_channel = report.ratio(
                sum(int(n) for _, n in numsub), len(numsub)
            )

            before = await read_all(http, processes, redis)
            model_cpu, client_cpu = cpu_seconds(model.pid), time.process_time()
            with profiling(processes, args.profile):
                measures.wall_s, senders, watched = await pairs_at_once(pairs, timeout)
            after = await read_all(http, processes, redis)
            measures.model_server_cpu_s = cpu_seconds(model.pid) - model_cpu
            measures.client_cpu_s = time.process_time() - client_cpu
            reply_figures(measures, senders, watched, expected)
            replies_counted(measures, before, after, len(pairs))
        finally:
            await chats.close_all(opened)
            await redis.aclose()
    measures.errors += len(failed)
    measures.error_samples = (failed + measures.error_samples)[:5]
    return measures, watched


@contextlib.contextmanager
def profiling(processes: Sequence[Process], folder: Path | None) -> Iterator[None]:
    """py-spy profiles of both processes while the block runs, if profiles were asked for
    (`python -m bench.hotspots FOLDER/project-b-replies.txt`)."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    recorders = [
        py_spy(p.child.pid, folder / f"{p.name}-replies.txt", p.child.env, folder)
        for p in processes
    ]
    with contextlib.ExitStack() as stack:
        for recorder in recorders:
            stack.enter_context(recorder)
        time.sleep(1.0)  # noqa: ASYNC251 - before anything is sent: py-spy attaches
        yield
        for recorder in recorders:  # SIGINT: py-spy writes its file
            recorder.stop(timeout=30, signum=signal.SIGINT)


def watched_error(reply: chats.Watched, expected: str) -> str | None:
    if error := report.reply_error(reply, expected):
        return error
    if reply.lost or reply.repeated:
        return f"{reply.lost} deltas lost, {reply.repeated} repeated"
    return None


def set_up_figures(
    measures: report.TwoProcesses, before: Reading, between: Reading, after: Reading, k: int
) -> None:
    """Per chat: its conversation made, then its two tabs opened."""
    measures.setup_cpu_ms = (sum(after.cpu) - sum(before.cpu)) * 1000 / k
    measures.create_cpu_ms = (sum(between.cpu) - sum(before.cpu)) * 1000 / k
    measures.connect_cpu_ms = (sum(after.cpu) - sum(between.cpu)) * 1000 / k
    measures.queries_per_setup = (after.queries - before.queries) / k
    measures.executions_per_setup = (after.executions - before.executions) / k
    redis = after.redis.minus(before.redis)
    measures.redis_commands_per_setup = redis.total / k
    measures.redis_setup_commands = per_item(redis, k)


def reply_figures(
    measures: report.TwoProcesses,
    senders: list[chats.Reply],
    watched: list[chats.Watched],
    expected: str,
) -> None:
    """The watching tabs' figures (lost and repeated deltas too), the sending tabs' errors."""
    report.reply_figures(measures, watched, expected)
    measures.lost_deltas = sum(r.lost for r in watched)
    measures.repeated_deltas = sum(r.repeated for r in watched)
    measures.fresh_states = sum(r.fresh_states for r in watched)
    sender_errors = [e for r in senders if (e := report.reply_error(r, expected))]
    measures.sender_errors = len(sender_errors)
    ttfts = [r.first_delta * 1000 for r in senders if r.first_delta is not None]
    measures.sender_ttft_p99_ms = report.percentile(ttfts, 99)
    gaps = [r.largest_gap * 1000 for r in senders if r.done_at is not None]
    measures.sender_gap_p99_ms = report.percentile(gaps, 99)
    measures.error_samples = sorted(set(measures.error_samples + sender_errors))[:5]


def replies_counted(
    measures: report.TwoProcesses, before: Reading, after: Reading, k: int
) -> None:
    """CPU of both processes per token, statements and Redis per reply."""
    measures.cpu_a_s, measures.cpu_b_s = (
        a - b for a, b in zip(after.cpu, before.cpu, strict=True)
    )
    measures.server_cpu_s = sum(after.cpu) - sum(before.cpu)
    measures.cpu_per_token_us = report.ratio(measures.server_cpu_s * 1e6, measures.tokens_relayed)
    measures.queries_per_reply = (after.queries - before.queries) / k
    measures.executions_per_reply = (after.executions - before.executions) / k
    redis = after.redis.minus(before.redis)
    measures.redis_commands_per_reply = redis.total / k
    measures.publishes_per_reply = redis.commands.get("publish", 0) / k
    measures.redis_reply_commands = per_item(redis, k)
    if measures.subscribers_per_channel is not None:
        measures.deliveries_per_reply = measures.publishes_per_reply * (
            measures.subscribers_per_channel
        )
    measures.redis_cpu_ms_per_reply = redis.cpu_s * 1000 / k
    measures.redis_cpu_us_per_command = report.ratio(redis.cpu_s * 1e6, redis.total)


def two_processes(env: dict[str, str], folder: Path, accounts: dict[str, Any]) -> list[Process]:
    """Processes A and B under daphne (not yet started), counting their statements
    (`bench.probe_asgi`), each with the same logged-in users."""
    processes = []
    for name in ("project-a", "project-b"):
        port = free_port()
        argv = python("-m", "daphne", "-b", HOST, "-p", str(port), "bench.probe_asgi:application")
        base_url = f"http://{HOST}:{port}"
        target = chats.Project(base_url, accounts["cookie_name"], accounts["sessions"])
        processes.append(Process(name, Child(name, argv, env, folder), base_url, target))
    return processes


def measure_project(
    args: Any, folder: Path, model: Child, env: dict[str, str]
) -> report.TwoProcesses:
    """Both processes on the database and Redis of `env`: migrated, K+2 users logged in."""
    run_python(["manage.py", "migrate", "--no-input", "--verbosity", "0"], env)
    accounts = json.loads(
        run_python(["-m", "bench.database", "sessions", str(args.k + 2)], env).stdout
    )
    processes = two_processes(env, folder, accounts)
    try:
        for process in processes:
            process.child.start()
        for process in processes:
            process.child.wait_for_port(int(process.base_url.rsplit(":", 1)[1]))
        measures, watched = asyncio.run(measure(args, processes, model, env["REDIS_URL"]))
    finally:
        for process in processes:
            process.child.stop()
    stored = json.loads(run_python(["-m", "bench.database", "replies"], env).stdout)
    measures.wrong_texts = sum(1 for reply in watched if _stored_differs(reply, stored))
    return measures


def _stored_differs(reply: chats.Reply, stored: dict[str, dict[str, str]]) -> bool:
    row = stored.get(reply.conversation_id or "")
    return row is None or row["content"] != reply.text or row["status"] != reply.status


def result(
    args: Any, ours: report.TwoProcesses, reference: report.Measures | None, redis_url: str | None
) -> dict[str, Any]:
    return {
        "config": {
            "processes": 2,
            "k": args.k,
            "tokens": args.tokens,
            "rate": args.rate,
            "redis": redis_url or "the benchmark's own redis-server",
        },
        "machine": machine(),
        "ours": ours.as_json(),
        "reference": reference.as_json() if reference else None,
        "ratios": {
            "cpu_per_token": report.ratio(
                ours.cpu_per_token_us, reference.cpu_per_token_us if reference else None
            ),
        },
        "targets_met": report.two_targets_met(ours, reference),
        "table": report.two_table(ours, reference),
    }


def headline(result: dict[str, Any]) -> str:
    config, host = result["config"], result["machine"]
    return (
        f"Two processes, K={config['k']} chats at once, each watched from the other process, "
        f"{config['tokens']} tokens per reply at {config['rate']:g} tokens/s; Redis: "
        f"{config['redis']}; {host['cpus']} x {host['cpu_model']}, Python {host['python']}"
    )
