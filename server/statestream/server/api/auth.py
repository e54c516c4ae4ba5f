"""Bearer-token access control: who owns a session."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from statestream.contract.errors import Unauthenticated


class Auth:
    """Accepted tokens (none = auth off). A session belongs to the token that opened it."""

    def __init__(self, tokens: list[str] | None = None):
        self._owners = {t: hashlib.sha256(t.encode()).hexdigest()[:32] for t in (tokens or [])}

    @classmethod
    def from_file(cls, path: str) -> "Auth":
        if not path:
            return cls()
        tokens = [line.strip() for line in Path(path).read_text().splitlines()]
        tokens = [t for t in tokens if t and not t.startswith("#")]
        if not tokens:
            raise ValueError(f"--auth-token-file {path}: no tokens in it")
        return cls(tokens)

    def owner(self, context) -> str | None:
        """The caller's owner id (None when auth is off); UNAUTHENTICATED without a good token."""
        if not self._owners:
            return None
        token = None
        for key, value in context.invocation_metadata() or ():
            scheme, _, credentials = value.partition(" ")
            if key == "authorization" and scheme.lower() == "bearer":  # schemes are case-insensitive (RFC 7235)
                token = credentials.strip()
        if token is not None:
            for known, owner in self._owners.items():
                if hmac.compare_digest(known, token):
                    return owner
        raise Unauthenticated("missing or wrong bearer token (metadata 'authorization: Bearer <token>')")
