"""API tokens as text: made from the system's randomness, stored as a SHA-256 hash only.

A token is ``cmq_`` followed by 43 URL-safe characters (256 random bits). Its
first :data:`PREFIX_LENGTH` characters are kept in clear to show in the admin
and to find the row; the whole token is kept only as its hash, so the
database cannot give a token back. Nothing here imports Django.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["TOKEN_PREFIX", "PREFIX_LENGTH", "new_token", "token_prefix", "token_hash", "hash_matches"]

TOKEN_PREFIX = "cmq_"
#: Characters kept in clear: ``cmq_`` and 8 more (48 random bits), enough to tell tokens apart.
PREFIX_LENGTH = len(TOKEN_PREFIX) + 8


def new_token() -> str:
    """A fresh token, to be shown once and never stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_prefix(token: str) -> str:
    return token[:PREFIX_LENGTH]


def token_hash(token: str) -> str:
    """The hex SHA-256 of ``token``: what the database keeps. (256 random bits need no salt or stretching.)"""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_matches(token: str, stored_hash: str) -> bool:
    """Whether ``token`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(token_hash(token), stored_hash)
