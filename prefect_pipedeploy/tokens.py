"""Endpoint tokens: generated once, stored only as a hash, compared in constant time.

For: the secret a caller shows to trigger an endpoint deployment. Not for: Prefect API
credentials (endpoint tokens are deliberately separate from them).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_PREFIX = "pdt_"


def new_token() -> str:
    """A fresh endpoint token (256 random bits)."""
    return _PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: `sha256:<hex>` (the token is random, so no slow hash)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str | None, stored_hash: str | None) -> bool:
    """Whether `token` is the one whose hash is stored; constant time, False when either is missing."""
    if not token or not stored_hash:
        return False
    return hmac.compare_digest(hash_token(token), stored_hash)
