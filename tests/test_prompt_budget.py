"""History is trimmed to the prompt budget: whole messages, newest kept, system prompt kept."""

from __future__ import annotations

from chat.llm import build_prompt, message_tokens

HISTORY = [
    ("user", "a" * 400),  # about 104 tokens with framing
    ("assistant", "b" * 400),
    ("user", "c" * 40),  # 14
    ("assistant", "d" * 40),
    ("user", "e" * 40),
]


def test_build_prompt_without_budget_keeps_everything():
    assert len(build_prompt("Be brief.", HISTORY)) == 6


def test_build_prompt_keeps_latest_whole_messages_that_fit():
    prompt = build_prompt("Be brief.", HISTORY, budget=60)
    assert prompt[0] == {"role": "system", "content": "Be brief."}
    assert [m["content"][0] for m in prompt[1:]] == ["c", "d", "e"]
    assert sum(message_tokens(m) for m in prompt) <= 60


def test_build_prompt_never_cuts_a_message_in_half():
    prompt = build_prompt("", HISTORY, budget=200)
    assert all(m["content"] in {c for _, c in HISTORY} for m in prompt)
    assert [m["content"][0] for m in prompt] == ["b", "c", "d", "e"]


def test_build_prompt_always_sends_the_question():
    prompt = build_prompt("", [("user", "x" * 10_000)], budget=10)
    assert prompt == [{"role": "user", "content": "x" * 10_000}]
