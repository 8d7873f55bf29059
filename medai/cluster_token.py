"""The Ray cluster's auth token: where ``medai submit`` finds it, and when sending it warns.

Ray 2.52+ clusters started with ``RAY_AUTH_MODE=token`` (and, since Ray 2.59, local clusters
whenever ``~/.ray/auth_token`` exists) reject unauthenticated requests. The token is looked up
with Ray's precedence (``RAY_AUTH_TOKEN``, then the file named by ``RAY_AUTH_TOKEN_PATH``, then
``~/.ray/auth_token``) and never written anywhere. It travels in clear over ``http://``: to any
address other than this machine's loopback :func:`plain_http_warning` says so.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TokenLookup", "find_auth_token", "plain_http_warning"]

_TOKEN_ENV = "RAY_AUTH_TOKEN"
_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


@dataclass
class TokenLookup:
    """Result of looking for a Ray authentication token.

    Attributes:
        token: The token, or ``None`` when none was found.
        source: Where the token came from (human readable), or ``None``.
        checked: One line per place that was looked at and why it gave no token.
    """

    token: str | None = None
    source: str | None = None
    checked: list[str] = field(default_factory=list)

    def missing_message(self, address: str) -> str:
        """Explain that the cluster wants a token and exactly where none was found."""
        lines = "\n".join(f"  - {line}" for line in self.checked)
        return (
            f"the Ray cluster at {address} requires token authentication, but no "
            f"authentication token was found:\n{lines}\n"
            "Copy the cluster's token (run `ray get-auth-token` on the head node, or read the "
            "cluster's token Secret) into ~/.ray/auth_token, or point RAY_AUTH_TOKEN_PATH at a "
            "file holding it, or export RAY_AUTH_TOKEN."
        )


def _read_token_file(path: Path) -> tuple[str | None, str | None]:
    """Return ``(token, None)`` or ``(None, why_not)`` for a token file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "does not exist"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    token = text.strip()
    if not token:
        return None, "is empty"
    return token, None


def find_auth_token(
    environ: Mapping[str, str] | None = None, home: Path | None = None
) -> TokenLookup:
    """Find the Ray authentication token the way Ray's own token loader does.

    Precedence: a non-empty ``RAY_AUTH_TOKEN``; else, when ``RAY_AUTH_TOKEN_PATH`` is set, that
    file (no fallback if it is missing or empty, as in Ray); else ``~/.ray/auth_token``.

    Args:
        environ: Environment to read (default ``os.environ``).
        home: Home directory (default: ``HOME`` from ``environ``, else ``Path.home()``).

    Returns:
        A :class:`TokenLookup`; ``token`` is ``None`` when nothing usable was found and
        ``checked`` says why for every place looked at.
    """
    env = os.environ if environ is None else environ
    lookup = TokenLookup()
    value = env.get(_TOKEN_ENV, "").strip()
    if value:
        lookup.token, lookup.source = value, f"${_TOKEN_ENV}"
        return lookup
    lookup.checked.append(f"{_TOKEN_ENV} is {'empty' if _TOKEN_ENV in env else 'not set'}")

    token_path = env.get(_TOKEN_PATH_ENV, "").strip()
    if token_path:
        path = Path(token_path).expanduser()
        token, why = _read_token_file(path)
        if token:
            lookup.token, lookup.source = token, f"{path} (${_TOKEN_PATH_ENV})"
        else:
            lookup.checked.append(f"{_TOKEN_PATH_ENV}={token_path}: the file {why}")
        return lookup
    lookup.checked.append(f"{_TOKEN_PATH_ENV} is not set")

    if home is None:
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    path = home / ".ray" / "auth_token"
    token, why = _read_token_file(path)
    if token:
        lookup.token, lookup.source = token, str(path)
    else:
        lookup.checked.append(f"{path} {why}")
    return lookup


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def plain_http_warning(address: str, source: str) -> str | None:
    """The warning to print before a token goes in clear to ``address``, or ``None``.

    A bearer token sent over ``http://`` can be read by anyone on the network path and lets
    them run code on the cluster. Loopback addresses (SSH tunnels, ``kubectl port-forward``)
    and ``https://`` are fine.

    Args:
        address: The dashboard address (``http://host:port``; no scheme means http).
        source: Where the token came from, for the message.
    """
    parsed = urllib.parse.urlsplit(address if "://" in address else f"http://{address}")
    if parsed.scheme.lower() != "http" or _is_loopback_host(parsed.hostname or ""):
        return None
    return (
        f"medai submit: warning: sending the Ray token from {source} over plain http to "
        f"{parsed.hostname}; anyone on the network path can read it and run code on the "
        "cluster. Prefer an SSH tunnel or `kubectl port-forward` to http://127.0.0.1:8265, or "
        "an https:// address.\n"
    )
