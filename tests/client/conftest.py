"""Shared by the client's tests: a tool implementation that records its calls, the scripted
gateway."""

from __future__ import annotations

from typing import Any

import pytest

from tests.client.scripted import ScriptedGateway


class Impl:
    """A tool implementation that counts its calls."""

    def __init__(self, output: Any = None, error: Exception | None = None):
        self.calls: list[dict[str, Any]] = []
        self.output = output if output is not None else {"ok": True}
        self.error = error

    def __call__(self, args: dict[str, Any]) -> Any:
        self.calls.append(args)
        if self.error is not None:
            raise self.error
        return self.output


@pytest.fixture
def scripted() -> ScriptedGateway:
    return ScriptedGateway()
