"""Text as the database can store it, decided once, where text comes in; and how many
tokens a text is estimated to hold.

PostgreSQL refuses a NUL character in text (`DataError`), and no UTF-8 column takes a lone
surrogate (JSON can spell one, as "\\ud800"). Text from users (messages, titles, system
prompts) and from the model passes through `storable` on its way in, so that no such
character ever reaches a database step, where it would fail that step for everyone who
shares it.
"""

from __future__ import annotations

import re

# A rough tokens-per-character ratio, for servers that send no usage and for budgets.
CHARS_PER_TOKEN = 4
# Chat templates add a few tokens of framing to every message.
TOKENS_PER_MESSAGE = 4

REPLACEMENT = "\ufffd"
# In a Python string every surrogate code point is a lone one: JSON's escaped pairs
# decode to the character they spell.
SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with NUL characters and lone surrogates replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    if not text.isascii():
        text = SURROGATE.sub(REPLACEMENT, text)
    return text


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN) if text else 0


def estimate_prompt_tokens(texts: list[str]) -> int:
    """The tokens of a prompt of these messages, estimated."""
    return sum(estimate_tokens(text) + TOKENS_PER_MESSAGE for text in texts)
