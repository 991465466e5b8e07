"""The decision path: the v1 agent API and the use cases it calls (run_start, step_record,
tool_call_decide, tool_call_report, run_finish), their pure checks, budgets and breakers.
It imports no monitoring, page or demo code (import contracts in pyproject.toml)."""
