"""The web console (`/ui/`): server-rendered pages over the admin API, for admins and reviewers."""

from tollhouse.gateway.console.wiring import ConsoleParts, build_console

__all__ = ["ConsoleParts", "build_console"]
