"""A chat websocket driven through the real ASGI application, as a browser tab would."""

from __future__ import annotations

import json
from typing import Any

from channels.testing import WebsocketCommunicator

from chatsite.asgi import application


class ChatSocket:
    def __init__(
        self,
        conversation_id: Any,
        *,
        cookie: str | None,
        origin: str = "http://localhost",
        frame_timeout: float = 10,
    ) -> None:
        headers = [(b"origin", origin.encode())]
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        self.path = f"/ws/conversations/{conversation_id}/"
        self.communicator = WebsocketCommunicator(application, self.path, headers=headers)
        self.connected = False
        self.close_code: int | None = None
        self.state: dict[str, Any] | None = None
        # How long to wait for the app at each step, as a browser's socket would: the
        # communicator needs it to stop the app when it runs out, so it is not left to an
        # `asyncio.timeout` around the call.
        self.frame_timeout = frame_timeout

    async def connect(self) -> None:
        """Connect; `connected` and `close_code` (a refusal) or `state` say how it went."""
        connected, _ = await self.communicator.connect(timeout=self.frame_timeout)
        if not connected:
            return
        first = await self.communicator.receive_output(self.frame_timeout)
        if first["type"] == "websocket.close":
            self.close_code = first.get("code")
            return
        self.connected = True
        self.state = self._decode(first)
        assert self.state["type"] == "state"

    async def send(self, **frame: Any) -> None:
        await self.communicator.send_json_to(frame)

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self) -> dict[str, Any]:
        return self._decode(await self.communicator.receive_output(self.frame_timeout))

    async def receive_until(self, kind: str) -> list[dict[str, Any]]:
        """Every frame up to and including the first of type `kind`."""
        frames = []
        while True:
            frame = await self.receive()
            frames.append(frame)
            if frame["type"] == kind:
                return frames

    async def nothing_more(self) -> bool:
        return bool(await self.communicator.receive_nothing(timeout=0.2))

    async def close(self) -> None:
        if self.connected:
            self.connected = False
            await self.communicator.disconnect()

    @staticmethod
    def _decode(output: dict[str, Any]) -> dict[str, Any]:
        assert output["type"] == "websocket.send", output
        frame: dict[str, Any] = json.loads(output["text"])
        return frame


def deltas_text(frames: list[dict[str, Any]], message_id: str, after: int = 0) -> str:
    """The text of a reply's delta frames, checking that seq counts on from `after` with no
    gap and no repeat."""
    deltas = [f for f in frames if f["type"] == "delta" and f["message_id"] == message_id]
    assert [f["seq"] for f in deltas] == list(range(after + 1, after + 1 + len(deltas)))
    return "".join(f["text"] for f in deltas)
