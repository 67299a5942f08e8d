"""Lifecycle: the process-wide "we are stopping" flag that the server and the app share.

On SIGTERM the server (serve.py) calls `start_draining()` from its signal handler: `/readyz`
fails from that moment, so a load balancer stops sending new work, while uvicorn stops
accepting connections and lets requests in flight finish (`cluster.drain_seconds`). Long-lived
streams (session GET streams, `subscriptions/listen`) would hold the drain to its deadline,
so the app's drain callbacks end them gracefully; their clients reconnect to another replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["Lifecycle"]

logger = logging.getLogger("tollhouse")


class Lifecycle:
    """Whether this process is draining, and what to do when it starts."""

    def __init__(self) -> None:
        self.draining = False
        self._callbacks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run drain callbacks on `loop` (the app's, captured at start)."""
        self._loop = loop

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call `callback()` on the event loop when draining starts."""
        self._callbacks.append(callback)

    def start_draining(self) -> None:
        """Safe from a signal handler: sets the flag now, runs the callbacks on the loop."""
        if self.draining:
            return
        self.draining = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for callback in self._callbacks:
            loop.call_soon_threadsafe(_guarded, callback)


def _guarded(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # a failing callback must not stop the others or the drain
        logger.exception("drain callback failed")
