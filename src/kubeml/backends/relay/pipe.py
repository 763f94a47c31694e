"""The relay over a `multiprocessing` connection: a process worker's socket, or a Ray
function's direct round socket (`kubeml.backends.ray.rounds`)."""

from __future__ import annotations

import asyncio
from typing import Any


class PipeTransport:
    """One end of a connection, for the relay's messages (either side)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def receive(self) -> Any:
        return self.conn.recv()

    async def readable(self) -> None:
        """Resolves when a message has arrived, the event loop watching the socket."""
        if self.conn.poll():
            return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self.conn.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
