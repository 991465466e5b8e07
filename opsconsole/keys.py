"""API keys and tokens: random, shown once, stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

AGENT_KEY_PREFIX = "aok_"
USER_TOKEN_PREFIX = "aou_"


@dataclass(frozen=True)
class NewKey:
    raw: str  # given to its owner once, never stored
    prefix: str  # what pages show to tell keys apart
    key_hash: str  # what is stored and looked up


def new_key(prefix: str) -> NewKey:
    """A fresh agent key or user token (``prefix`` says which)."""
    raw = generate(prefix)
    return NewKey(raw=raw, prefix=display_prefix(raw), key_hash=digest(raw))


def generate(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a plain SHA-256 cannot be brute-forced.
    return hashlib.sha256(raw.encode()).hexdigest()


def display_prefix(raw: str) -> str:
    return raw[:12]
