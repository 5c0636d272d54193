"""Device commands in flight: request ids, the answers awaited for them, and their errors."""

from __future__ import annotations

import asyncio
from typing import Any


class CommandError(Exception):
    """A device command failed: refused (code and code_name say the NACK), or no answer.

    `result` is what the device sent with its refusal (often {"error": "..."}), if anything.
    """

    def __init__(
        self,
        message: str,
        code: int | None = None,
        code_name: str | None = None,
        result: Any = None,
    ):
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.result = result


class CommandTimeout(CommandError):
    """The device did not answer a command in time."""


class PendingCommands:
    """Request ids (u16, wrapping, never two in flight at once) and the futures awaiting them."""

    def __init__(self) -> None:
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self) -> tuple[int, asyncio.Future]:
        """A fresh request id and the future its (status, result) answer will resolve."""
        if len(self._waiting) >= 0x10000:
            raise CommandError("65536 commands already in flight")
        request_id = self._next_id
        while request_id in self._waiting:
            request_id = (request_id + 1) & 0xFFFF
        self._next_id = (request_id + 1) & 0xFFFF
        answer = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        return request_id, answer

    def resolve(self, request_id: int, status: int, result: Any) -> bool:
        """Hand an answer to its waiter; False when nobody waits (late, or never asked)."""
        answer = self._waiting.pop(request_id, None)
        if answer is None or answer.done():
            return False
        answer.set_result((status, result))
        return True

    def discard(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)

    def fail_all(self, error: CommandError) -> None:
        """The link went away: every waiter gets `error` now instead of its timeout."""
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            if not answer.done():
                answer.set_exception(error)
