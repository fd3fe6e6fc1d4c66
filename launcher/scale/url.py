"""Redis URLs fit to show: the password never leaves this module.

Kept apart from `launcher.scale.limits` so that `launcher.config` can redact the
URL it records in the ledger header without importing the Redis client.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url", "scrub"]

_HIDDEN = "***"


def redact_url(url: str) -> str:
    """`url` with any password (in the user info or a `password=` query field) replaced by ***.

    A URL that cannot be parsed is replaced whole: it might hold a password
    in a place this function does not understand.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, has_password, _password = userinfo.partition(":")
            if has_password:
                userinfo = f"{user}:{_HIDDEN}"
            elif user and parts.scheme in ("redis", "rediss"):
                # Some clients read `redis://secret@host` as a password: hide it too.
                userinfo = _HIDDEN
            netloc = f"{userinfo}@{host}"
        query = parts.query
        if query:
            fields = [
                (name, _HIDDEN if name.lower() == "password" else value)
                for name, value in parse_qsl(query, keep_blank_values=True)
            ]
            query = urlencode(fields, safe="*")
        if f"{parts.scheme}://" not in url:
            return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        # Rebuilt by hand: urlunsplit drops the `//` of `unix:///path`.
        shown = f"{parts.scheme}://{netloc}{parts.path}"
        return (
            shown
            + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else "")
        )
    except ValueError:
        return "<unparsable Redis URL>"


def scrub(text: str, url: str) -> str:
    """`text` (an error message) with every secret of `url` replaced by ***."""
    try:
        parts = urlsplit(url)
        secrets = {parts.password or ""}
        if parts.username and parts.password is None:
            secrets.add(parts.username)  # maybe a password, see `redact_url`
        secrets.update(
            value
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if name.lower() == "password"
        )
    except ValueError:
        return text.replace(url, redact_url(url))
    text = text.replace(url, redact_url(url))
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, _HIDDEN)
    return text
