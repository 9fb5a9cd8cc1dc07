"""URIs as messages may show them: a password written into one (`postgresql://user:PASSWORD@host/db`,
`http://user:PASSWORD@host`) becomes `***`, so that no error line or log line repeats it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def has_password(uri: str) -> bool:
    try:
        return bool(urlsplit(uri).password)
    except ValueError:  # not a URL at all (a bad port, ...): nothing to find in it
        return False


def redact_uri(uri: str) -> str:
    """`uri` with the password of its user part, if any, replaced by `***`."""
    if not has_password(uri):
        return uri
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
