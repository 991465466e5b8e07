"""API keys and tokens: random, shown once, stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import secrets

AGENT_KEY_PREFIX = "aok_"
USER_TOKEN_PREFIX = "aou_"


def generate(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a plain SHA-256 cannot be brute-forced.
    return hashlib.sha256(raw.encode()).hexdigest()


def display_prefix(raw: str) -> str:
    return raw[:12]
