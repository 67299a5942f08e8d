"""Local entry points: `tollhouse serve` and `tollhouse db upgrade`.

The only place (with demo.py) that reads the environment into Settings.
"""

from __future__ import annotations

import math
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from pydantic import ValidationError

from tollhouse.gateway.admin import SUPPORTED_TRANSPORTS
from tollhouse.gateway.app import Deps, create_app
from tollhouse.gateway.lifecycle import Lifecycle
from tollhouse.gateway.receive_deadline import receive_deadline_protocol
from tollhouse.gateway.settings import AuthSettings, Settings
from tollhouse.logs import configure_logging
from tollhouse.registry.config import ConfigError, LoadedConfig, load_config_file
from tollhouse.registry.migrate import database_url_for, upgrade

__all__ = [
    "GatewayServer",
    "db_upgrade_main",
    "load_settings",
    "run_gateway",
    "serve_main",
    "uvicorn_config",
]


def load_settings(
    config: LoadedConfig | None = None, *, host: str | None = None, port: int | None = None
) -> Settings:
    """Settings from the environment, then the config file's `gateway:` section, then flags."""
    settings = Settings()
    update: dict[str, object] = {}
    if config is not None and config.gateway.public_url:
        update["public_url"] = config.gateway.public_url
    if config is not None and config.gateway.auth is not None:
        # The file's keys win over the environment's, key by key.
        update["auth"] = AuthSettings.model_validate(settings.auth.model_dump() | dict(config.gateway.auth))
    if host is not None:
        update["host"] = host
    if port is not None:
        update["port"] = port
    if "public_url" not in settings.model_fields_set and "public_url" not in update:
        # Unset: the gateway's own address, so origins and resource URIs match what clients use.
        shown = update.get("host", settings.host)
        shown = "127.0.0.1" if shown in ("0.0.0.0", "::") else shown  # noqa: S104 - a comparison
        shown = f"[{shown}]" if ":" in str(shown) else shown  # an IPv6 literal in a URL
        update["public_url"] = f"http://{shown}:{update.get('port', settings.port)}"
    # Validated again as a whole: a flag or the file may make the combination invalid.
    return Settings.model_validate({**settings.model_dump(), **update})


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    """The uvicorn settings tollhouse runs with: httptools and uvloop, no access log.

    The HTTP protocol is httptools' plus the connection-level receive deadline and head size limit
    (receive_deadline.py): uvicorn has none of its own.
    """
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        http=receive_deadline_protocol(settings.limits),
        loop="uvloop",
        lifespan="on",
        access_log=False,
        # JSON logs: uvicorn's own loggers go through the root handler (tollhouse/logs.py) too.
        log_config=None if settings.telemetry.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        log_level=settings.log_level,
        server_header=False,
        timeout_keep_alive=30,
        # SIGTERM: uvicorn stops accepting and waits this long for requests in flight.
        timeout_graceful_shutdown=math.ceil(settings.cluster.drain_seconds),
    )


class GatewayServer(uvicorn.Server):
    """uvicorn.Server that stops gracefully on SIGINT/SIGTERM and then exits 0.

    The signal starts the app's drain at once (`/readyz` fails, long-lived streams end) while
    uvicorn closes the listener and lets requests in flight finish. uvicorn re-raises a captured
    signal after shutdown, so the process would report being killed (status -15) even after a
    clean drain; a service manager should see success.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle | None = None) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.lifecycle is not None:
            self.lifecycle.start_draining()
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve_main(
    config: str | None = None, host: str | None = None, port: int | None = None, workers: int = 1
) -> int:
    """Run the gateway until interrupted; with a config file, apply it first."""
    loaded = None
    if config is not None:
        try:
            loaded = load_config_file(config)
        except (ConfigError, OSError) as exc:
            print(f"tollhouse: error: {exc}", file=sys.stderr)
            return 1
        for warning in loaded.warnings:
            print(f"tollhouse: warning: {warning}", file=sys.stderr)
        from tollhouse.gateway.authorization import validate_entries

        policy_problems = validate_entries(loaded.policies)
        if policy_problems:
            print(
                f"tollhouse: error: {config}: invalid policies: {'; '.join(policy_problems)}", file=sys.stderr
            )
            return 1
    try:
        settings = load_settings(loaded, host=host, port=port)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        print(f"tollhouse: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    servers = loaded.servers if loaded else ()
    unsupported = ", ".join(u.name for u in servers if u.transport not in SUPPORTED_TRANSPORTS)
    if unsupported:
        supported = ", ".join(SUPPORTED_TRANSPORTS)
        print(
            f"tollhouse: error: servers {unsupported} use a transport this version lacks ({supported})",
            file=sys.stderr,
        )
        return 1
    configure_logging(settings.log_level, settings.telemetry.log_format)
    if workers > 1:
        from tollhouse.gateway.workers import run_workers

        return run_workers(settings, config, workers)
    run_gateway(settings, loaded)
    return 0


def run_gateway(
    settings: Settings, loaded: LoadedConfig | None = None, sockets: list[socket.socket] | None = None
) -> None:
    """Serve one gateway process until SIGTERM/SIGINT (on `sockets` when a supervisor bound them)."""
    lifecycle = Lifecycle()
    app = create_app(settings, Deps(lifecycle=lifecycle), apply_config=loaded)
    GatewayServer(uvicorn_config(app, settings), lifecycle).run(sockets=sockets)


def db_upgrade_main() -> int:
    """Apply database migrations up to the newest."""
    settings = Settings()
    upgrade(database_url_for(settings.database_url, settings.data_dir))
    print("tollhouse: database is up to date")
    return 0
