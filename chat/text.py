"""Text as the database can store it, decided once, where text comes in.

PostgreSQL refuses a NUL character in text (`DataError`), and no UTF-8 column takes a lone
surrogate (JSON can spell one, as "\\ud800"). Text from users (messages, titles, system
prompts) and from the model passes through `storable` on its way in, so that no such
character ever reaches a database step, where it would fail that step for everyone who
shares it.
"""

from __future__ import annotations

import re

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
