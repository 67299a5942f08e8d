"""`tollhouse serve --workers N`: N gateway processes behind one listening socket.

The supervisor binds the socket once and hands it to each worker (multiprocessing's spawn
start method), so the kernel spreads connections across them. Workers are replicas in every
other respect: each has its own pool, sessions and audit chain (node name `<node>-w<i>`), and
they follow each other through the change log like replicas on separate machines do.

Worker 0 starts alone and must be ready before the others start: it migrates the database,
applies `--config`, and creates keys and the admin token on a first start, so N processes
never race to do those. A worker that dies is restarted (with a back-off); SIGTERM/SIGINT is
passed to every worker, each drains (`cluster.drain_seconds`), and the supervisor exits 0.
"""

from __future__ import annotations

import http.client
import logging
import multiprocessing
import multiprocessing.process
import signal
import socket
import sys
import threading
import time
from types import FrameType

from tollhouse.gateway.settings import Settings

__all__ = ["run_workers"]

logger = logging.getLogger("tollhouse")
_READY_TIMEOUT = 120.0
_RESTART_MAX_DELAY = 30.0
_STABLE_SECONDS = 60.0


def run_workers(settings: Settings, config: str | None, count: int) -> int:
    """Supervise `count` worker processes until SIGTERM/SIGINT; returns the exit status."""
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers: list[multiprocessing.process.BaseProcess] = []

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker,
            args=(index, config, settings.host, port, sock),
            name=f"tollhouse-worker-{index}",
            daemon=False,
        )
        process.start()
        return process

    try:
        workers.append(start(0))
        if not _wait_ready(settings.host, port, workers[0], stop):
            code = workers[0].exitcode
            print("tollhouse: error: the first worker did not become ready", file=sys.stderr)
            return 1 if code in (None, 0) else int(code)
        workers.extend(start(i) for i in range(1, count))
        print(f"tollhouse: serving with {count} workers on {settings.host}:{port}", file=sys.stderr)
        delays = [1.0] * count
        started = [time.monotonic()] * count
        while not stop.wait(0.5):
            for index, process in enumerate(workers):
                if process.is_alive() or stop.is_set():
                    continue
                if time.monotonic() - started[index] > _STABLE_SECONDS:
                    delays[index] = 1.0  # it ran fine for a while: a new crash starts the back-off afresh
                logger.error(
                    "worker %d exited with status %s; restarting in %.0f s",
                    index,
                    process.exitcode,
                    delays[index],
                )
                if stop.wait(delays[index]):
                    break
                delays[index] = min(delays[index] * 2, _RESTART_MAX_DELAY)
                workers[index] = start(index)
                started[index] = time.monotonic()
        return 0
    finally:
        _stop_all(workers, settings.cluster.drain_seconds + 10)
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker(index: int, config: str | None, host: str, port: int, sock: socket.socket) -> None:
    """One worker process: the same settings as the supervisor, its own node name."""
    from tollhouse.gateway.serve import load_settings, run_gateway
    from tollhouse.logs import configure_logging
    from tollhouse.registry.config import load_config_file

    loaded = load_config_file(config) if config is not None else None
    settings = load_settings(loaded, host=host, port=port)
    settings = settings.model_copy(update={"node_name": f"{settings.node_name}-w{index}"})
    configure_logging(settings.log_level, settings.telemetry.log_format)
    # Only the first worker applies the file; the others find its result in the database.
    run_gateway(settings, loaded if index == 0 else None, sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _wait_ready(
    host: str, port: int, process: multiprocessing.process.BaseProcess, stop: threading.Event
) -> bool:
    """Poll `/readyz` until the worker answers 200; False if it died, the wait timed out or we stop."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline and process.is_alive() and not stop.is_set():
        connection = http.client.HTTPConnection(target, port, timeout=2)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return True
        except OSError:
            pass
        finally:
            connection.close()
        stop.wait(0.1)
    return False


def _stop_all(workers: list[multiprocessing.process.BaseProcess], timeout: float) -> None:
    for process in workers:
        if process.is_alive() and process.pid is not None:
            process.terminate()  # SIGTERM: the worker drains
    deadline = time.monotonic() + timeout
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(5)
