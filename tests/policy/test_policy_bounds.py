"""Numbers in a policy are bounded by what the decisions can compute with."""

from __future__ import annotations

import pytest

from agents.policy.document import SEED_POLICY_YAML, PolicyError, normalise, parse_yaml


@pytest.mark.parametrize("where", ["writes", "tool"])
def test_an_approval_timeout_past_thirty_days_is_refused(where):
    document = parse_yaml(SEED_POLICY_YAML)
    if where == "writes":
        document["writes"] = {"timeout_seconds": 10**12}
    else:
        document["tools"]["definitions"] = {
            "email.send": {"approval": {"required": True, "timeout_seconds": 10**12}}
        }

    with pytest.raises(PolicyError) as refused:
        normalise(document)

    assert "timeout_seconds" in "; ".join(refused.value.errors)
