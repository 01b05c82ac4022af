"""The benchmark's figures: from what the chats saw and the server spent, to one table."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.chats import Reply


@dataclass
class Measures:
    """One target's figures; None where a figure does not apply (or was not measured)."""

    alone_s: float | None = None
    wall_s: float | None = None
    wall_ratio: float | None = None  # all K at once / one chat alone
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    gap_p99_ms: float | None = None
    frames_per_reply: float | None = None
    errors: int = 0
    wrong_texts: int | None = None
    tokens_relayed: int = 0
    server_cpu_s: float | None = None  # during the K replies
    loop_cpu_s: float | None = None  # of which the event loop's thread
    cpu_per_token_us: float | None = None
    setup_cpu_ms: float | None = None
    create_cpu_ms: float | None = None  # of which POST /api/conversations/
    connect_cpu_ms: float | None = None  # of which the socket's connect and `state`
    queries_per_reply: float | None = None
    queries_per_setup: float | None = None
    idle_kib: float | None = None
    # Context: the other processes on the same cores, during the K replies.
    model_server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    error_samples: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile: p99 of 200 values is the 198th smallest."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def reply_figures(measures: Measures, replies: Sequence[Reply], expected_text: str) -> None:
    """Fill in what the chats saw: latencies, gaps, frames, errors."""
    ms = 1000.0
    ttfts = [r.first_delta * ms for r in replies if r.first_delta is not None]
    gaps = [r.largest_gap * ms for r in replies if r.done_at is not None]
    measures.ttft_p50_ms = percentile(ttfts, 50)
    measures.ttft_p99_ms = percentile(ttfts, 99)
    measures.gap_p99_ms = percentile(gaps, 99)
    measures.frames_per_reply = sum(r.deltas for r in replies) / len(replies) if replies else None
    errors = [error for r in replies if (error := reply_error(r, expected_text))]
    measures.errors = len(errors)
    measures.error_samples = sorted(set(errors))[:5]
    measures.tokens_relayed = sum(len(r.text.split()) for r in replies)


def reply_error(reply: Reply, expected_text: str) -> str | None:
    if reply.error:
        return reply.error
    if reply.status != "complete":
        return f"status {reply.status}"
    if reply.text != expected_text:
        return "streamed text differs from the model's"
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --- The table ----------------------------------------------------------------------------

Check = Callable[[Measures, Measures | None], bool | None]


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    digits: int
    target: str = ""
    check: Check | None = None


def at_most(key: str, limit: float) -> Check:
    def check(ours: Measures, reference: Measures | None) -> bool | None:
        value = getattr(ours, key)
        return None if value is None else value <= limit

    return check


def _cpu_ratio(ours: Measures, reference: Measures | None) -> bool | None:
    value = ratio(ours.cpu_per_token_us, reference.cpu_per_token_us if reference else None)
    return None if value is None else value <= 0.35


def _sse_cpu_ratio(sse: Measures, websocket: Measures | None) -> bool | None:
    value = ratio(sse.cpu_per_token_us, websocket.cpu_per_token_us if websocket else None)
    return None if value is None else value <= 1.25


ROWS = (
    Row("one chat alone (s)", "alone_s", 2),
    Row("all K at once, wall (s)", "wall_s", 2),
    Row("all K at once / one alone", "wall_ratio", 2, "<= 1.15", at_most("wall_ratio", 1.15)),
    Row("time to first token p50 (ms)", "ttft_p50_ms", 0),
    Row("time to first token p99 (ms)", "ttft_p99_ms", 0, "<= 500", at_most("ttft_p99_ms", 500)),
    Row("largest gap per chat p99 (ms)", "gap_p99_ms", 0, "<= 250", at_most("gap_p99_ms", 250)),
    Row("delta frames per reply", "frames_per_reply", 1),
    Row("errors", "errors", 0, "0", at_most("errors", 0)),
    Row("stored text differs from stream", "wrong_texts", 0, "0", at_most("wrong_texts", 0)),
    Row("server CPU per token (us)", "cpu_per_token_us", 1, "<= 0.35 x ref", _cpu_ratio),
    Row("set-up CPU per chat (ms)", "setup_cpu_ms", 2, "<= 5", at_most("setup_cpu_ms", 5)),
    Row("  of which creating it (ms)", "create_cpu_ms", 2),
    Row("  of which connect and state (ms)", "connect_cpu_ms", 2),
    # A statement that stores a batch (many sends, many rows) counts once.
    Row("DB statements per reply", "queries_per_reply", 1),
    Row("DB statements per set-up", "queries_per_setup", 1),
    Row("RSS per idle socket (KiB)", "idle_kib", 1, "<= 32", at_most("idle_kib", 32)),
    Row("server CPU during the K replies (s)", "server_cpu_s", 2),
    Row("  of which the event loop thread (s)", "loop_cpu_s", 2),
    Row("model server CPU, same time (s)", "model_server_cpu_s", 2),
    Row("benchmark client CPU, same time (s)", "client_cpu_s", 2),
)


# The project over SSE beside itself over websockets: what differs is the transport.
_SSE_CHECKS: dict[str, tuple[str, Check]] = {"cpu_per_token_us": ("<= 1.25 x ws", _sse_cpu_ratio)}
_NOT_OVER_SSE = {"connect_cpu_ms", "idle_kib"}
SSE_ROWS = tuple(
    Row(row.label, row.key, row.digits, *_SSE_CHECKS.get(row.key, (row.target, row.check)))
    for row in ROWS
    if row.key not in _NOT_OVER_SSE
)


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def table(ours: Measures, reference: Measures | None) -> str:
    """A Markdown table: each figure for ours and the reference, their ratio, the target."""
    return any_table(ROWS, ("ours", "reference", "ours / ref"), ours, reference)


def sse_table(sse: Measures, websocket: Measures) -> str:
    """The same for the project over SSE against its websocket figures."""
    return any_table(SSE_ROWS, ("SSE", "websocket", "SSE / ws"), sse, websocket)


def any_table(
    rows: Sequence[Row], names: tuple[str, str, str], mine: Measures, theirs: Measures | None
) -> str:
    """A Markdown table of `rows` for two sets of figures; a figure that `theirs` lacks
    is n/a."""
    lines = [
        f"| measure | {names[0]} | {names[1]} | {names[2]} | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        value = getattr(mine, row.key)
        other = getattr(theirs, row.key, None)
        both = isinstance(value, float) and isinstance(other, float)
        value_to_other = ratio(value, other) if both else None
        met = row.check(mine, theirs) if row.check else None
        cells = [
            row.label,
            _cell(value, row.digits),
            _cell(other, row.digits),
            "" if value_to_other is None else _cell(value_to_other, 2),
            row.target,
            "" if met is None else ("yes" if met else "NO"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_met(ours: Measures, reference: Measures | None) -> dict[str, bool | None]:
    return {row.key: row.check(ours, reference) for row in ROWS if row.check}


def sse_targets_met(sse: Measures, websocket: Measures) -> dict[str, bool | None]:
    return {row.key: row.check(sse, websocket) for row in SSE_ROWS if row.check}


# --- Two processes (bench.two_processes) -------------------------------------------------


@dataclass
class TwoProcesses(Measures):
    """The figures of a two-process run; the reply figures are the watching tabs'."""

    lost_deltas: int = 0
    repeated_deltas: int = 0
    fresh_states: int = 0  # a `state` again mid-reply, replacing what the tab showed
    sender_ttft_p99_ms: float | None = None
    sender_gap_p99_ms: float | None = None
    sender_errors: int = 0
    cpu_a_s: float | None = None
    cpu_b_s: float | None = None
    executions_per_reply: float | None = None  # an executemany's rows each
    executions_per_setup: float | None = None
    idle_cpu_ms_per_s: float | None = None  # both processes, K chats open, no reply
    redis_commands_per_reply: float | None = None
    publishes_per_reply: float | None = None
    subscribers_per_channel: float | None = None
    deliveries_per_reply: float | None = None
    redis_commands_per_setup: float | None = None
    redis_idle_commands_per_s: float | None = None
    redis_cpu_ms_per_reply: float | None = None
    redis_cpu_us_per_command: float | None = None
    # Per reply, by command, and per set-up: what the counts above are made of.
    redis_reply_commands: dict[str, float] = field(default_factory=dict)
    redis_setup_commands: dict[str, float] = field(default_factory=dict)


def _two_cpu_ratio(ours: Measures, reference: Measures | None) -> bool | None:
    value = ratio(ours.cpu_per_token_us, reference.cpu_per_token_us if reference else None)
    return None if value is None else value <= 0.5


TWO_ROWS = (
    Row("all K at once, wall (s)", "wall_s", 2),
    Row("time to first token, watching tab p50 (ms)", "ttft_p50_ms", 0),
    Row("time to first token, watching tab p99 (ms)", "ttft_p99_ms", 0),
    Row("time to first token, sending tab p99 (ms)", "sender_ttft_p99_ms", 0),
    Row(
        "largest gap per watching tab p99 (ms)",
        "gap_p99_ms",
        0,
        "<= 300",
        at_most("gap_p99_ms", 300),
    ),
    Row("largest gap per sending tab p99 (ms)", "sender_gap_p99_ms", 0),
    Row("delta frames per reply (watching tab)", "frames_per_reply", 1),
    Row("lost deltas", "lost_deltas", 0, "0", at_most("lost_deltas", 0)),
    Row("repeated deltas", "repeated_deltas", 0, "0", at_most("repeated_deltas", 0)),
    Row("fresh states mid-reply", "fresh_states", 0),
    Row("errors, watching tabs", "errors", 0, "0", at_most("errors", 0)),
    Row("errors, sending tabs", "sender_errors", 0, "0", at_most("sender_errors", 0)),
    Row("stored text differs from watching tab", "wrong_texts", 0, "0", at_most("wrong_texts", 0)),
    Row(
        "CPU per token, both processes (us)", "cpu_per_token_us", 1, "<= 0.5 x ref", _two_cpu_ratio
    ),
    Row("  process A CPU during the K replies (s)", "cpu_a_s", 2),
    Row("  process B CPU during the K replies (s)", "cpu_b_s", 2),
    Row("set-up CPU per chat, both processes (ms)", "setup_cpu_ms", 2),
    Row("  of which creating it (ms)", "create_cpu_ms", 2),
    Row("  of which its two tabs' connect and state (ms)", "connect_cpu_ms", 2),
    Row("CPU while idle, both processes (ms/s)", "idle_cpu_ms_per_s", 1),
    Row("DB statements per reply", "queries_per_reply", 1),
    Row("  executed (executemany: one per row)", "executions_per_reply", 1),
    Row("DB statements per set-up (2 tabs)", "queries_per_setup", 1),
    Row("  executed (executemany: one per row)", "executions_per_setup", 1),
    Row("Redis commands per reply", "redis_commands_per_reply", 1),
    Row("  of which PUBLISH", "publishes_per_reply", 1),
    Row("subscribers per conversation channel", "subscribers_per_channel", 2),
    Row("Redis deliveries per reply", "deliveries_per_reply", 1),
    Row("Redis commands per set-up (2 tabs)", "redis_commands_per_setup", 1),
    Row("Redis commands per second, idle", "redis_idle_commands_per_s", 1),
    Row("Redis CPU per reply (ms)", "redis_cpu_ms_per_reply", 3),
    Row("Redis CPU per command (us)", "redis_cpu_us_per_command", 2),
    Row("model server CPU, same time (s)", "model_server_cpu_s", 2),
    Row("benchmark client CPU, same time (s)", "client_cpu_s", 2),
)


def two_table(ours: TwoProcesses, reference: Measures | None) -> str:
    return any_table(TWO_ROWS, ("two processes", "reference", "ours / ref"), ours, reference)


def two_targets_met(ours: TwoProcesses, reference: Measures | None) -> dict[str, bool | None]:
    return {row.key: row.check(ours, reference) for row in TWO_ROWS if row.check}
