"""Bearer-token check of the HTTP API: optional on loopback, required when the proxy binds anything else.

The token comes from the environment (`SPEECHGUIDE_API_TOKEN` unless `args.auth.token_env` names
another variable) or, discouraged, from `args.auth.token` in the Serve config. When a token is set, every
API route (`POST /v1/generate`, `GET /v1/models`) wants `Authorization: Bearer <token>` and answers
401 with `WWW-Authenticate: Bearer` otherwise; `GET /healthz` (liveness) stays open. Without a token the
API is open, which is allowed only while the HTTP proxy binds a loopback address (127.0.0.0/8, ::1,
localhost): bound to anything else, the app refuses to start (`check_exposure`).

Only the standard library: the client imports `TOKEN_ENV` from here without Ray or torch. The token is
never logged and never put in an error message.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from typing import Mapping, Optional

TOKEN_ENV = "SPEECHGUIDE_API_TOKEN"
MIN_TOKEN_CHARS = 16
# RFC 6750's b64token: what an Authorization header can carry as is.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
CHALLENGE = 'Bearer realm="speechguide"'


class AuthConfigError(ValueError):
    """The app's token setup cannot be served (one line, naming what to set; never the token)."""


def is_loopback(host: Optional[str]) -> bool:
    """Whether an HTTP bind address only accepts connections from this machine."""
    if host is None:
        return False
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token(token: str, source: str) -> str:
    """`token` if usable in an Authorization header and not trivially short; else AuthConfigError."""
    if len(token) < MIN_TOKEN_CHARS or not TOKEN_PATTERN.fullmatch(token):
        raise AuthConfigError(
            f"the API token from {source} must be at least {MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 - . _ ~ + / "
            f"(then = padding); make one with {TOKEN_HINT}"
        )
    return token


def resolve_token(config_token: Optional[str], token_env: str = TOKEN_ENV, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The API token: the environment variable `token_env` when set (non-empty), else the config's, else None."""
    environ = os.environ if environ is None else environ
    value = environ.get(token_env, "").strip()
    if value:
        return check_token(value, f"${token_env}")
    if config_token:
        return check_token(config_token, "args.auth.token")
    return None


def check_exposure(host: Optional[str], token: Optional[str], token_env: str = TOKEN_ENV) -> None:
    """Refuse an open API on a non-loopback address (or on an address that could not be found out)."""
    if token is None and not is_loopback(host):
        where = f"HTTP host {host}" if host is not None else "an HTTP host that could not be determined"
        raise AuthConfigError(
            f"the HTTP API would be open to the network ({where} is not loopback): set ${token_env} "
            f"(or args.auth.token) to a bearer token, e.g. from {TOKEN_HINT}, or bind 127.0.0.1"
        )


def check_bearer(authorization: Optional[str], token: str) -> Optional[tuple[str, str]]:
    """None when `authorization` (the header's value) carries `token`; else (detail, WWW-Authenticate value).

    The comparison is constant-time (`hmac.compare_digest`) on the UTF-8 bytes.
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return "missing bearer token: send the header 'Authorization: Bearer <token>'", CHALLENGE
    if not hmac.compare_digest(credentials.encode("utf-8", "surrogateescape"), token.encode("utf-8")):
        return "invalid bearer token", f'{CHALLENGE}, error="invalid_token"'
    return None
