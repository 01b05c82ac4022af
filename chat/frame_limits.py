"""Frames within what a websocket server sends as one message.

daphne (autobahn) refuses to send a message over 1 MiB, and a frame it refuses never
arrives: a tab would wait for its `state` for good. Every other frame is small by the
app's own limits (a message has at most CHAT_MAX_INPUT_CHARS, a reply at most
CHAT_MAX_REPLY_TOKENS), but a `state` holds up to CHAT_STATE_MESSAGES of them, and they
can add up past it: 16,000 characters of Chinese are 96 KB of JSON. A `state` over the
limit leaves out its oldest messages until it fits.
"""

from __future__ import annotations

import json

from chat.watchers import Frame

# Under daphne's 1 MiB (1,048,576 bytes), with room to spare. The JSON is ASCII (non-ASCII
# is escaped), so its length in characters is its length in bytes.
FRAME_BYTES = 1_000_000


def encoded_state(frame: Frame) -> tuple[Frame, str]:
    """A `state` frame and its JSON, without the oldest messages it cannot hold."""
    text = json.dumps(frame)
    if len(text) <= FRAME_BYTES:
        return frame, text
    messages = frame["messages"]
    excess, dropped = len(text) - FRAME_BYTES, 0
    while excess > 0 and dropped < len(messages):
        excess -= len(json.dumps(messages[dropped])) + len(", ")
        dropped += 1
    frame = {**frame, "messages": messages[dropped:]}
    return frame, json.dumps(frame)
