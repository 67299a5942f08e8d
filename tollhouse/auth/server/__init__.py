"""The built-in OAuth 2.1 authorization server (authlib): discovery, sign-in, consent, tokens.

The gateway mounts `authorization_server_routes(...)`; docs/oauth.md describes the flows.
"""

from tollhouse.auth.server.app import authorization_server_routes, is_dev_loopback
from tollhouse.auth.server.throttle import Rate, ThrottleSettings

__all__ = ["Rate", "ThrottleSettings", "authorization_server_routes", "is_dev_loopback"]
