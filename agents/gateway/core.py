"""The gateway's fast path: an allowed tool call decided outside Django, in two round trips.

``POST /api/v1/runs/{id}/tool-calls`` is the call every agent makes before every tool call. Through
Django it costs 11 queries and 13-15 ms of CPU per decision; most of that is the framework, not the
decision. :class:`ToolCallFastPath` sits in front of Django at the ASGI level (``opsconsole/asgi.py``)
and answers the common case itself: an enforced, plain ``allow`` with nothing else to do. Anything
else - any other verdict, an approval, an idempotent replay, observe mode, a breaker that is not
closed, a budget crossing 80 % (its webhook notice), unusual input, SQLite - is rolled back and
handed to Django unchanged, so every stop and every rarely taken branch lives in one place
(``agents.gateway.services``).

The decision itself is ``tool_call_verdict`` (``agents.gateway.decisions``), the one copy of the
logic, fed with what two statements read inside the transaction:

1. ``BEGIN``, the run locked (``SELECT ... FOR UPDATE``, as ``run_lock_for_agent``), then one read
   of everything else the verdict needs, taken after the lock with a fresh snapshot: the agent's
   state held ``FOR KEY SHARE`` (as ``agent_state_hold``: a pause waits for decisions in flight),
   the key (revoked?), the kill switch, the number of the policy in force, the repeat and per-tool
   counts, the tool's breaker and the tool call's new id - sent together (psycopg's pipeline
   mode), so they cost one round trip;
2. the tool call, its trace event, the run's counters (and, once a minute, the key's
   ``last_used_at``) and ``COMMIT``, again in one round trip.

Nothing read from a per-process cache decides: the key cache only maps a key's hash to its row,
and the policy cache holds parsed documents by (number, created_at); the key's revocation, the
agent's state, the kill switch and the policy number are read in the decision's own statement, so
a change committed by any worker governs the very next decision in every worker. No check runs
in SQL, so there is nothing to keep in step with ``tool_call_verdict``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db import connection as django_connection
from django.http.request import split_domain_port, validate_host
from django.utils import timezone
from prometheus_client import Counter

from agents.gateway.breakers import breaker_window
from agents.gateway.budgets import usage_fractions
from agents.gateway.decisions import (
    Verdict,
    args_errors,
    output_errors,
    result_stop_reason,
    tool_call_verdict,
)
from agents.gateway.metrics import DECISION_SECONDS, DECISIONS, REGISTRY
from agents.models import (
    Agent,
    AgentKey,
    BreakerState,
    Decision,
    EventKind,
    KillSwitch,
    PolicyVersion,
    Run,
    RunStatus,
    ToolBreaker,
    ToolCall,
    TraceEvent,
)
from agents.policy.document import MAX_TOOL_NAME, TOOL_NAME_PATTERN, Policy, canonical_hash
from opsconsole import keys
from opsconsole.limits import (
    MAX_JSON_DEPTH,
    ToolCallRateThrottle,
    cache_health,
    json_depth,
    rate_window,
)
from opsconsole.live import group_for

logger = logging.getLogger("opsconsole.gateway.core")

PATH = re.compile(r"/api/v1/runs/([0-9]{1,18})/tool-calls")
TOOL_NAME = re.compile(TOOL_NAME_PATTERN)
AGENT_KEY_PREFIX = "aok_"
# How often a key's (and its agent's) last_used_at is refreshed (opsconsole.authentication).
TOUCH_EVERY = timedelta(seconds=60)
DATABASE_RETRY_SECONDS = 5.0

FAST_PATH = Counter(
    "opsconsole_gateway_fast_path",
    "Tool-call requests the fast path answered (served) or handed to Django, by reason.",
    ["outcome"],
    registry=REGISTRY,
)

# The columns the fast path knows the meaning of. A field added to Agent or Run later may change
# what a decision means (a mode, a gate): until someone teaches this module about it, the fast
# path stays off (``fast_path_problems``) and every call goes through Django.
KNOWN_AGENT_FIELDS = {
    "id",
    "name",
    "description",
    "enabled",
    "disabled_reason",
    "paused",
    "disabled_by",
    "disabled_at",
    "created_at",
    "last_used_at",
    "mode",
}
KNOWN_RUN_FIELDS = {
    "id",
    "agent",
    "agent_version",
    "task",
    "metadata",
    "idempotency_key",
    "request_hash",
    "policy_version",
    "status",
    "stop_reason",
    "answer",
    "error",
    "max_steps",
    "max_seconds",
    "max_tool_calls",
    "max_usd",
    "max_tokens",
    "steps",
    "tool_calls",
    "tokens",
    "usd",
    "started_at",
    "last_activity_at",
    "ended_at",
    "waited_seconds",
    "waiting_since",
    # observe mode: the run's mode must be enforce; the rest is written only by the slow path
    "mode",
    "would_stop_reason",
    "would_stop_detail",
    "would_stop_at",
    "would_approvals",
    "would_approval_tool",
    # observed runs (OTLP): the run's source must be the gateway
    "source",
    "trace_id",
}
ENFORCE = "enforce"
# Columns of the run that must hold these values for the fast path to decide (when they exist).
RUN_GUARDS = {"mode": ENFORCE, "source": "gateway"}


def fast_path_problems() -> list[str]:
    """Why the fast path cannot serve in this process (empty: it can)."""
    problems = []
    if not getattr(settings, "OPSCONSOLE_GATEWAY_FAST_PATH", True):
        problems.append("OPSCONSOLE_GATEWAY_FAST_PATH is off")
    if django_connection.vendor != "postgresql":
        problems.append(f"the database is {django_connection.vendor}, not PostgreSQL")
    for model, known in ((Agent, KNOWN_AGENT_FIELDS), (Run, KNOWN_RUN_FIELDS)):
        unknown = {f.name for f in model._meta.concrete_fields} - known
        if unknown:
            problems.append(f"{model.__name__} has fields the fast path does not know: {unknown}")
    return problems


# --- the request ------------------------------------------------------------------------------


class Fallback(Exception):
    """Hand this request to Django unchanged; ``reason`` is counted in ``FAST_PATH``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CallRequest:
    """A tool-call request the fast path may serve: parsed exactly as the API's serializer would
    parse it, or refused (``Fallback``) whenever it would not be parsed to the very same values."""

    run_id: int
    key_hash: str
    tool: str
    args: dict[str, Any]
    idempotency_key: str | None
    secure: bool


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity: the API's parser is strict


def request_parse(
    *, run_id: int, headers: Iterable[tuple[bytes, bytes]], scheme: str, body: bytes
) -> CallRequest:
    """The request, or ``Fallback`` when anything in it is not the plain case."""
    header = {name.lower(): value for name, value in headers}
    media_type, _, parameters = header.get(b"content-type", b"").partition(b";")
    if media_type.strip().lower() != b"application/json" or parameters.strip().lower() not in (
        b"",
        b"charset=utf-8",
    ):
        raise Fallback("content_type")
    host = header.get(b"host", b"").decode("latin-1")
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        raise Fallback("host")
    secure = _is_secure(header, scheme)
    if getattr(settings, "SECURE_SSL_REDIRECT", False) and not secure:
        raise Fallback("insecure")  # Django's SecurityMiddleware redirects it
    scheme_word, _, raw_key = header.get(b"authorization", b"").decode("latin-1").partition(" ")
    raw_key = raw_key.strip()
    if scheme_word.lower() != "bearer" or not raw_key.startswith(AGENT_KEY_PREFIX):
        raise Fallback("authorization")
    if b"\\u" in body:
        raise Fallback("escapes")  # U+0000 and lone surrogates are refused by the API's parser
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Fallback("json") from None
    if not isinstance(data, dict):
        raise Fallback("json")
    tool = data.get("tool")
    if (
        not isinstance(tool, str)
        or not 1 <= len(tool) <= MAX_TOOL_NAME
        or TOOL_NAME.fullmatch(tool) is None
    ):
        raise Fallback("input")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise Fallback("input")
    key = data.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= 200 or key.strip() != key
    ):
        raise Fallback("input")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise Fallback("input")
    size = len(json.dumps(args, separators=(",", ":"), default=str).encode())
    if size > settings.OPSCONSOLE_MAX_ARGS_BYTES:
        raise Fallback("args_too_large")
    return CallRequest(
        run_id=run_id,
        key_hash=keys.digest(raw_key),
        tool=tool,
        args=args,
        idempotency_key=key,
        secure=secure,
    )


def _is_secure(header: dict[bytes, bytes], scheme: str) -> bool:
    """``HttpRequest.is_secure()`` with ``SECURE_PROXY_SSL_HEADER``."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        value = header.get(name)
        if value is not None:
            return value.decode("latin-1").split(",")[0].strip() == proxy[1]
    return scheme == "https"


# --- per-process caches (never decisive: see the module docstring) ------------------------------


@dataclass(frozen=True)
class KeyEntry:
    key_id: int
    agent_id: int
    agent_created_at: datetime


class _Caches:
    keys: dict[str, KeyEntry] = {}
    policies: dict[tuple[int, datetime], Policy] = {}
    latest_policy: Policy | None = None
    agent_names: dict[int, str] = {}
    problems: list[str] | None = None


def _remember_key(key_hash: str, entry: KeyEntry) -> None:
    if len(_Caches.keys) > 10_000:
        _Caches.keys.clear()
    _Caches.keys[key_hash] = entry


# --- the decision (sans I/O: a generator of statement batches) ----------------------------------

Statement = tuple[str, Any]
Rows = list[tuple[Any, ...]] | None
Batch = list[Statement]
DecisionSteps = Generator[Batch, list[Rows], "Outcome"]

_RUN_COLUMNS = [
    "agent_version",
    "task",
    "policy_version",
    "status",
    "stop_reason",
    "max_steps",
    "max_seconds",
    "max_tool_calls",
    "max_usd",
    "max_tokens",
    "steps",
    "tool_calls",
    "tokens",
    "usd",
    "started_at",
    "ended_at",
    "waited_seconds",
    "waiting_since",
    "last_activity_at",
]


def _table(model: type) -> str:
    return model._meta.db_table  # type: ignore[attr-defined]


def _run_guards() -> dict[str, str]:
    return {name: value for name, value in RUN_GUARDS.items() if _has_field(Run, name)}


def _sql_lock_run(guards: dict[str, str]) -> str:
    columns = [*_RUN_COLUMNS, *guards]
    return (
        f"SELECT {', '.join(columns)} FROM {_table(Run)} "
        "WHERE id = %(run)s AND agent_id = %(agent)s FOR UPDATE"
    )


def _sql_read(agent_has_mode: bool) -> str:
    toolcall = _table(ToolCall)
    return f"""
SELECT a.enabled, a.name, {"a.mode" if agent_has_mode else "'enforce'"},
       k.revoked_at IS NULL, k.last_used_at, a.last_used_at,
       (SELECT mode FROM {_table(KillSwitch)} WHERE id = 1),
       p.number, p.created_at,
       (SELECT count(*) FROM {toolcall} t WHERE t.run_id = %(run)s AND t.tool = %(tool)s
          AND t.args_hash = %(hash)s AND t.counted),
       CASE WHEN %(capped)s THEN (SELECT count(*) FROM {toolcall} t
          WHERE t.run_id = %(run)s AND t.tool = %(tool)s AND t.counted) END,
       b.state, b.forced_until,
       (SELECT t.id FROM {toolcall} t WHERE t.run_id = %(run)s AND t.idempotency_key = %(idem)s),
       nextval(pg_get_serial_sequence('{toolcall}', 'id'))
FROM {_table(Agent)} a
JOIN {_table(AgentKey)} k ON k.id = %(key)s AND k.agent_id = a.id
LEFT JOIN LATERAL (
  SELECT number, created_at FROM {_table(PolicyVersion)} ORDER BY number DESC LIMIT 1
) p ON true
LEFT JOIN {_table(ToolBreaker)} b ON b.tool = %(tool)s
WHERE a.id = %(agent)s
FOR KEY SHARE OF a
"""


def _has_field(model: type, name: str) -> bool:
    return any(f.name == name for f in model._meta.concrete_fields)  # type: ignore[attr-defined]


@dataclass
class Outcome:
    """What to write before COMMIT (``writes``) and what to answer; ``after_commit`` pushes the
    live update."""

    writes: Batch
    payload: dict[str, Any]
    run: Run
    broadcast: dict[str, Any] = field(default_factory=dict)
    policy: Policy | None = None  # the policy in force the decision was made with
    policy_key: tuple[int, datetime] | None = None  # its (number, created_at)


def _insert(model: type, values: dict[str, Any]) -> Statement:
    """An INSERT of every concrete column: the given values, else each field's own default (so a
    column another feature adds with a default is filled as the ORM would fill it)."""
    names, params = [], []
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of the proxy is a context-local lookup
    for model_field in model._meta.concrete_fields:  # type: ignore[attr-defined]
        if model_field.attname in values:
            value = values[model_field.attname]
        elif model_field.primary_key:
            continue
        else:
            value = model_field.get_default()
        names.append(model_field.column)
        params.append(model_field.get_db_prep_save(value, db))
    placeholders = ", ".join(["%s"] * len(names))
    return (
        f"INSERT INTO {_table(model)} ({', '.join(names)}) VALUES ({placeholders})",
        params,
    )


KEY_SQL = (
    "SELECT k.id, k.agent_id, a.created_at FROM {key} k JOIN {agent} a ON a.id = k.agent_id "
    "WHERE k.key_hash = %s"
)


def key_entry(row: tuple[Any, ...] | None) -> KeyEntry:
    """Remember a key's row (looked up once per process); ``Fallback`` for an unknown key."""
    if row is None:
        raise Fallback("unknown_key")  # the 401 is Django's
    return KeyEntry(*row)


def key_sql() -> str:
    return KEY_SQL.format(key=_table(AgentKey), agent=_table(Agent))


@dataclass(frozen=True)
class Guard:
    """A statement read with the decision's first batch: any row it returns hands the call to
    the slow path (``reason``), which decides it with what the guard stands for. The MCP front
    door guards a tool whose upstream definition is held this way."""

    sql: str
    params: Any
    reason: str


def decision_steps(
    request: CallRequest, entry: KeyEntry, *, now: datetime, guards: Iterable[Guard] = ()
) -> DecisionSteps:
    """Decide one tool call; yields batches of statements (run in one transaction, a batch per
    round trip) and returns the ``Outcome`` to commit, or raises ``Fallback``."""
    guards = list(guards)
    args_hash = canonical_hash(request.args)
    # The arguments are checked before the first statement (outside the transaction, so a slow
    # schema holds no lock) against the policy this process last decided with; under the lock the
    # result is used only if that is still the policy in force (as the slow path's precheck).
    seen = _Caches.latest_policy
    precheck: tuple[Policy, list[str]] | None = None
    if seen is not None and seen.is_allowed(
        request.tool, _Caches.agent_names.get(entry.agent_id, "")
    ):
        rule = seen.tool_rule_for(request.tool, _Caches.agent_names.get(entry.agent_id, ""))
        precheck = (seen, args_errors(rule, request.args) if rule.args_schema else [])
    agent_has_mode = _has_field(Agent, "mode")
    run_guards = _run_guards()
    # The per-tool count grows with the run: read only when the tool has a per-run cap (known from
    # the policy last seen; if the policy in force says otherwise, it is counted afterwards).
    capped = seen is None or seen.tool_rule_for(request.tool, "").max_calls_per_run is not None
    params = {
        "capped": capped,
        "run": request.run_id,
        "agent": entry.agent_id,
        "key": entry.key_id,
        "tool": request.tool,
        "hash": args_hash,
        "idem": request.idempotency_key,
    }
    run_rows, read_rows, *guarded = yield [
        (_sql_lock_run(run_guards), params),
        (_sql_read(agent_has_mode), params),
        *((guard.sql, guard.params) for guard in guards),
    ]
    for guard, rows in zip(guards, guarded, strict=True):
        if rows:
            raise Fallback(guard.reason)
    if not run_rows:
        raise Fallback("no_run")  # not this agent's run, or none: the 404 is Django's
    if not read_rows:
        _Caches.keys.pop(request.key_hash, None)
        raise Fallback("key_gone")
    run_row = run_rows[0]
    (
        agent_enabled,
        agent_name,
        agent_mode,
        key_active,
        key_used,
        agent_used,
        kill_mode,
        policy_number,
        policy_created,
        repeats,
        calls_of_tool,
        breaker_state,
        breaker_forced_until,
        existing_call,
        tool_call_id,
    ) = read_rows[0]
    if not key_active:
        raise Fallback("key_revoked")  # the 401 is Django's
    if agent_mode != ENFORCE:
        raise Fallback("observe")
    if list(run_row[len(_RUN_COLUMNS) :]) != list(run_guards.values()):
        raise Fallback("run_mode")  # observe mode, or a run that OTLP traces recorded
    if existing_call is not None:
        raise Fallback("idempotent_replay")
    if breaker_state is not None and (
        breaker_state != BreakerState.CLOSED
        or (breaker_forced_until is not None and breaker_forced_until > now)
    ):
        raise Fallback("breaker")
    if policy_number is None:
        raise Fallback("no_policy")
    policy = _Caches.policies.get((policy_number, policy_created))
    if policy is None:
        (doc_rows,) = yield [
            (f"SELECT document FROM {_table(PolicyVersion)} WHERE number = %s", [policy_number])
        ]
        document = doc_rows[0][0] if doc_rows else None
        if isinstance(document, str):
            document = json.loads(document)
        if not isinstance(document, dict):
            raise Fallback("no_policy")
        policy = Policy(policy_number, document)
        if len(_Caches.policies) > 64:
            _Caches.policies.clear()
        _Caches.policies[(policy_number, policy_created)] = policy
    _Caches.latest_policy = policy
    _Caches.agent_names[entry.agent_id] = agent_name

    run = Run(
        pk=request.run_id,
        agent_id=entry.agent_id,
        **dict(zip(_RUN_COLUMNS, run_row[: len(_RUN_COLUMNS)], strict=True)),
    )
    if run.status not in (RunStatus.RUNNING, RunStatus.WAITING_APPROVAL):
        raise Fallback("run_ended")

    if calls_of_tool is None and verdict_rule_capped(policy, request.tool, agent_name):
        (count_rows,) = yield [
            (
                f"SELECT count(*) FROM {_table(ToolCall)} t WHERE t.run_id = %s AND t.tool = %s "
                "AND t.counted",
                [request.run_id, request.tool],
            )
        ]
        calls_of_tool = count_rows[0][0] if count_rows else 0

    def invalid_args(rule: Any) -> list[str]:
        if precheck is not None and precheck[0] is policy:
            return precheck[1]
        return args_errors(rule, request.args)  # the policy changed since the precheck

    verdict: Verdict = tool_call_verdict(
        policy=policy,
        tool=request.tool,
        args=request.args,
        agent_name=agent_name,
        agent_enabled=bool(agent_enabled),
        kill_mode=kill_mode or "off",
        run=run,
        repeats=lambda: repeats,
        calls_of_tool=lambda: calls_of_tool,
        degraded=lambda rule: False,  # a breaker that is not closed went to Django above
        invalid_args=invalid_args,
    )
    if verdict.stop_reason is not None or verdict.decision != Decision.ALLOW:
        raise Fallback("not_allow")
    rule = verdict.rule
    before = usage_fractions(run)
    run.tool_calls += 1
    run.usd += rule.cost_usd
    run.last_activity_at = now
    after = usage_fractions(run)
    if any(
        fraction >= 0.8 > before.get(budget, 0.0)  # budgets.BUDGET_WARNING_FRACTION
        for budget, fraction in after.items()
    ):
        raise Fallback("budget_notice")  # the 80 % webhook notice is the slow path's

    call = {
        "id": tool_call_id,
        "run_id": request.run_id,
        "tool": request.tool,
        "args": request.args,
        "args_hash": args_hash,
        "idempotency_key": request.idempotency_key,
        "decision": Decision.ALLOW,
        "stop_reason": "",
        "detail": "",
        "counted": True,
        "cost_usd": rule.cost_usd,
        "created_at": now,
    }
    event = {
        "run_id": request.run_id,
        "kind": EventKind.TOOL_CALL,
        "at": now,
        "tool_call_id": tool_call_id,
        "data": {
            "tool_call_id": tool_call_id,
            "tool": request.tool,
            "args": request.args,
            "decision": Decision.ALLOW,
            "stop_reason": "",
            "detail": "",
            "cost_usd": str(rule.cost_usd),
        },
    }
    writes: Batch = [
        _insert(ToolCall, call),
        _insert(TraceEvent, event),
        (
            f"UPDATE {_table(Run)} SET tool_calls = %s, usd = %s, last_activity_at = %s "
            "WHERE id = %s",
            [run.tool_calls, run.usd, now, request.run_id],
        ),
    ]
    if key_used is None or now - key_used > TOUCH_EVERY:
        writes.append(
            (f"UPDATE {_table(AgentKey)} SET last_used_at = %s WHERE id = %s", [now, entry.key_id])
        )
        if agent_used is None or now - agent_used > TOUCH_EVERY:
            writes.append(
                (
                    f"UPDATE {_table(Agent)} SET last_used_at = %s WHERE id = %s",
                    [now, entry.agent_id],
                )
            )
    run_payload = run_representation(run, agent_name)
    payload = {
        "id": tool_call_id,
        "tool": request.tool,
        "decision": Decision.ALLOW.value,
        "stop_reason": None,
        "detail": "",
        "approval": None,
        "run": run_payload,
    }
    return Outcome(
        writes=writes,
        payload=payload,
        run=run,
        broadcast=run_broadcast_payload(run, agent_name),
        policy=policy,
        policy_key=(policy_number, policy_created),
    )


def run_broadcast_payload(run: Run, agent_name: str) -> dict[str, Any]:
    """``run_broadcast``'s payload."""
    return {
        "id": run.pk,
        "agent": agent_name,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "usage": run.usage(),
        "budgets": run.budgets(),
    }


# --- a plain result, recorded (the MCP front door reports the upstream's answer with it) --------


@dataclass(frozen=True)
class ReportRequest:
    """An allowed call's successful result, as ``tool_call_report(ok=True, usd=0)`` takes it,
    with the policy the output is validated against (the one its decision was made with)."""

    tool_call_id: int
    run_id: int
    agent_id: int
    agent_name: str
    tool: str
    output: Any
    latency_ms: int | None
    policy: Policy
    policy_key: tuple[int, datetime]
    validated: bool = False  # the caller checked the output against ``policy`` already


def _sql_report_breaker() -> str:
    return f"""
SELECT b.state, w.results, w.failures FROM {_table(ToolBreaker)} b
CROSS JOIN LATERAL (
  SELECT count(*) AS results, count(*) FILTER (WHERE NOT r.result_ok) AS failures FROM (
    SELECT t.result_ok FROM {_table(ToolCall)} t
    WHERE t.tool = b.tool AND t.reported_at IS NOT NULL
      AND (b.window_start IS NULL OR t.reported_at >= b.window_start)
    ORDER BY t.reported_at DESC LIMIT %(earlier)s
  ) r
) w
WHERE b.tool = %(tool)s
FOR UPDATE OF b
"""


def _update(model: type, pk: int, values: dict[str, Any]) -> Statement:
    """An UPDATE of the given fields, each prepared as the ORM prepares it."""
    names, params = [], []
    db = connections[DEFAULT_DB_ALIAS]
    for name, value in values.items():
        model_field = model._meta.get_field(name)  # type: ignore[attr-defined]
        names.append(f"{model_field.column} = %s")
        params.append(model_field.get_db_prep_save(value, db))
    return f"UPDATE {_table(model)} SET {', '.join(names)} WHERE id = %s", [*params, pk]


def report_steps(report: ReportRequest, *, now: datetime) -> DecisionSteps:
    """Record an allowed call's valid, successful result as ``tool_call_report`` does, in two
    round trips: the run, the call and the tool's breaker locked and its window counted, then the
    call's result, its trace event, the breaker's failure rate, the run's activity and COMMIT.

    Only the plain case: an output that fails validation, a policy changed since the decision, a
    call already reported, a breaker that is new, half-open or would open, a run that this result
    would stop - each raises ``Fallback`` and ``tool_call_report`` records it instead.
    """
    rule = report.policy.tool_rule(report.tool)
    if not report.validated and output_errors(rule, report.output):
        raise Fallback("invalid_output")
    settings_ = rule.breaker
    run_guards = _run_guards()
    params = {
        "run": report.run_id,
        "agent": report.agent_id,
        "call": report.tool_call_id,
        "tool": report.tool,
        # this result is the newest of the window: the breaker counts it with the earlier ones
        "earlier": max(int(settings_["window"]) - 1, 0),
    }
    run_rows, call_rows, policy_rows, breaker_rows = yield [
        (_sql_lock_run(run_guards), params),
        (
            f"SELECT decision, reported_at FROM {_table(ToolCall)} "
            "WHERE id = %(call)s AND run_id = %(run)s FOR UPDATE",
            params,
        ),
        (
            f"SELECT number, created_at FROM {_table(PolicyVersion)} ORDER BY number DESC LIMIT 1",
            params,
        ),
        (_sql_report_breaker(), params),
    ]
    if not run_rows or not call_rows:
        raise Fallback("no_run")
    run_row = run_rows[0]
    if list(run_row[len(_RUN_COLUMNS) :]) != list(run_guards.values()):
        raise Fallback("run_mode")
    decision, reported_at = call_rows[0]
    if decision != Decision.ALLOW or reported_at is not None:
        raise Fallback("reported")
    if not policy_rows or tuple(policy_rows[0]) != tuple(report.policy_key):
        raise Fallback("policy_changed")
    if not breaker_rows:
        raise Fallback("breaker_new")  # the slow path creates the tool's breaker row
    state, earlier, failures = breaker_rows[0]
    run = Run(
        pk=report.run_id,
        agent_id=report.agent_id,
        **dict(zip(_RUN_COLUMNS, run_row[: len(_RUN_COLUMNS)], strict=True)),
    )
    output = report.output
    writes: Batch = [
        _update(
            ToolCall,
            report.tool_call_id,
            {
                "result_ok": True,
                "output": output,
                "error": "",
                "latency_ms": report.latency_ms,
                "result_usd": Decimal("0"),
                "valid": True,
                "validation_errors": [],
                "reported_at": now,
                "result_hash": canonical_hash({"ok": True, "output": output, "error": ""}),
            },
        ),
        _insert(
            TraceEvent,
            {
                "run_id": report.run_id,
                "kind": EventKind.TOOL_RESULT,
                "at": now,
                "tool_call_id": report.tool_call_id,
                "data": {
                    "tool_call_id": report.tool_call_id,
                    "tool": report.tool,
                    "ok": True,
                    "valid": True,
                    "errors": [],
                    "error": "",
                    "latency_ms": report.latency_ms,
                    "usd": "0",
                    "output": output,
                },
            },
        ),
    ]
    if state == BreakerState.HALF_OPEN:
        raise Fallback("breaker_half_open")  # its trial closes it: the slow path's
    if state == BreakerState.CLOSED:
        rate, opens = breaker_window(earlier + 1, failures, settings_)
        if opens:
            raise Fallback("breaker_opens")
        writes.append(
            (
                f"UPDATE {_table(ToolBreaker)} SET failure_rate = %s, updated_at = %s "
                "WHERE tool = %s",
                [rate, now, report.tool],
            )
        )
    broadcast: dict[str, Any] = {}
    if run.status in (RunStatus.RUNNING, RunStatus.WAITING_APPROVAL):
        if result_stop_reason(run=run, tool=report.tool, spend=Decimal("0"), errors=[]):
            raise Fallback("result_stop")
        run.last_activity_at = now
        writes.append(
            (f"UPDATE {_table(Run)} SET last_activity_at = %s WHERE id = %s", [now, run.pk])
        )
        broadcast = run_broadcast_payload(run, report.agent_name)
    return Outcome(writes=writes, payload={}, run=run, broadcast=broadcast)


def verdict_rule_capped(policy: Policy, tool: str, agent_name: str) -> bool:
    return policy.tool_rule_for(tool, agent_name).max_calls_per_run is not None


def _iso(value: datetime | None) -> str | None:
    """A datetime as the API's serializers write it (UTC, ``Z``)."""
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def run_representation(run: Run, agent_name: str) -> dict[str, Any]:
    """``RunSerializer(run).data``, written out (the serializer costs more than the decision)."""
    budgets = run.budgets()
    usage = run.usage()
    return {
        "id": run.pk,
        "agent": agent_name,
        "agent_version": run.agent_version,
        "task": run.task,
        "status": str(run.status),
        "stop_reason": run.stop_reason or None,
        "budgets": {
            "max_steps": budgets["max_steps"],
            "max_seconds": budgets["max_seconds"],
            "max_tool_calls": budgets["max_tool_calls"],
            "max_usd": budgets["max_usd"],
            "max_tokens": budgets["max_tokens"],
        },
        "usage": {
            "steps": int(usage["steps"]),
            "tool_calls": int(usage["tool_calls"]),
            "tokens": int(usage["tokens"]),
            "usd": float(usage["usd"]),
            "seconds": float(usage["seconds"]),
            "waiting_seconds": float(usage["waiting_seconds"]),
        },
        "policy_version": run.policy_version,
        "started_at": _iso(run.started_at),
        "ended_at": _iso(run.ended_at),
    }


# --- rate limit (the same counters as opsconsole.limits.ToolCallRateThrottle) -------------------


@dataclass
class RateCount:
    """One request counted in the tool-call window; ``undo`` when Django takes the request over
    (it counts it again)."""

    key: str
    allowed: bool


def _rate() -> tuple[int, int] | None:
    rate = settings.OPSCONSOLE_RATE_LIMITS.get(ToolCallRateThrottle.scope)
    if not rate:
        return None
    return ToolCallRateThrottle().parse_rate(rate)  # type: ignore[return-value]


def _rate_key(entry: KeyEntry, period: int, database: str) -> str:
    window = rate_window(period)
    created = int(entry.agent_created_at.timestamp() * 1_000_000)
    return ToolCallRateThrottle.cache_format % {
        "db": database,
        "scope": ToolCallRateThrottle.scope,
        "ident": f"{entry.agent_id}.{created}",
        "window": window,
    }


def _redis_client(cache: Any) -> Any:
    """An asyncio Redis client on the rate-limit cache's server (one per event loop)."""
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    client = _Pool.redis.get(loop)
    if client is None:
        location = cache._servers[0] if hasattr(cache, "_servers") else settings.REDIS_URL
        options = getattr(cache, "_options", {}) or {}
        client = aioredis.Redis.from_url(
            location,
            socket_connect_timeout=options.get("socket_connect_timeout", 0.5),
            socket_timeout=options.get("socket_timeout", 0.5),
        )
        _Pool.redis[loop] = client
    return client


async def rate_count(entry: KeyEntry, database: str) -> RateCount | None:
    """Count this call in its agent's window (None: no limit, or the cache is down: allowed)."""
    rate = _rate()
    if rate is None or not cache_health.usable():
        return None
    limit, period = rate
    cache = caches[settings.OPSCONSOLE_RATE_LIMIT_CACHE]
    key = cache.make_and_validate_key(_rate_key(entry, period, database))
    try:
        if type(cache).__name__ == "RedisCache":
            pipe = _redis_client(cache).pipeline(transaction=False)
            pipe.set(key, 0, ex=period + 1, nx=True)
            pipe.incr(key)
            _, count = await pipe.execute()
        else:  # this process's memory: no I/O
            raw_key = _rate_key(entry, period, database)
            cache.add(raw_key, 0, timeout=period + 1)
            count = cache.incr(raw_key)
            key = raw_key
    except Exception as exc:  # noqa: BLE001 - as the throttle: a cache failure allows
        cache_health.failed(exc)
        return None
    return RateCount(key, count <= limit)


async def rate_undo(counted: RateCount | None) -> None:
    if counted is None:
        return
    cache = caches[settings.OPSCONSOLE_RATE_LIMIT_CACHE]
    try:
        if type(cache).__name__ == "RedisCache":
            await _redis_client(cache).decr(counted.key)
        else:
            cache.decr(counted.key)
    except Exception:  # noqa: BLE001, S110 - the window's count stays one high at worst
        pass


# --- drivers: run the decision's statements ----------------------------------------------------


class _Pool:
    """The async connection pool of this process's event loop (PostgreSQL)."""

    pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    # After a database failure the fast path steps aside this long: Django answers (its 503
    # while the database is gone) without first waiting for this pool too.
    down_until: float = 0.0
    redis: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    database: str = ""


def _conninfo() -> dict[str, Any]:
    db = connections["default"].settings_dict
    _Pool.database = db.get("NAME", "")
    params = {
        "dbname": db.get("NAME"),
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "connect_timeout": settings.DB_CONNECT_TIMEOUT,
        "autocommit": False,
    }
    return {k: v for k, v in params.items() if v is not None}


async def _pool() -> Any:
    from psycopg_pool import AsyncConnectionPool

    loop = asyncio.get_running_loop()
    pool = _Pool.pools.get(loop)
    if pool is None:
        pool = AsyncConnectionPool(
            kwargs=_conninfo(),
            min_size=1,
            max_size=getattr(settings, "OPSCONSOLE_GATEWAY_POOL_MAX", 16),
            timeout=settings.DB_CONNECT_TIMEOUT,
            open=False,
        )
        _Pool.pools[loop] = pool
        await pool.open()
    return pool


async def pool_close() -> None:
    """Close this event loop's pool (a server shutting down, a test's console stopping)."""
    pool = _Pool.pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


async def key_lookup_async(key_hash: str) -> KeyEntry:
    entry = _Caches.keys.get(key_hash)
    if entry is not None:
        return entry
    pool = await _pool()
    async with pool.connection() as conn:
        cursor = await conn.execute(key_sql(), [key_hash])
        entry = key_entry(await cursor.fetchone())
        await conn.rollback()
    _remember_key(key_hash, entry)
    return entry


async def agent_for_key_async(key_hash: str) -> Agent | None:
    """The agent of an active agent key, read fresh in one statement on this process's pool (the
    MCP front door authenticates every request so). None - authenticate through Django instead -
    when the key is unknown or revoked, or its last use is due to be recorded."""
    columns = [f.column for f in Agent._meta.concrete_fields]
    sql = (
        f"SELECT k.revoked_at IS NULL, k.last_used_at, {', '.join(f'a.{c}' for c in columns)} "
        f"FROM {_table(AgentKey)} k JOIN {_table(Agent)} a ON a.id = k.agent_id "
        "WHERE k.key_hash = %s"
    )
    pool = await _pool()
    async with pool.connection() as conn:
        await conn.set_autocommit(True)  # one statement, one round trip: no BEGIN / ROLLBACK
        try:
            cursor = await conn.execute(sql, [key_hash])
            row = await cursor.fetchone()
        finally:
            await conn.set_autocommit(False)
    if row is None or not row[0] or row[1] is None or timezone.now() - row[1] > TOUCH_EVERY:
        return None
    return Agent.from_db("default", [f.attname for f in Agent._meta.concrete_fields], list(row[2:]))


async def decide_async(
    request: CallRequest, entry: KeyEntry, now: datetime, guards: Iterable[Guard] = ()
) -> Outcome:
    """Run the decision on this process's async pool, pipelined: one round trip per batch, the
    writes and COMMIT in the last."""
    return await _drive_async(decision_steps(request, entry, now=now, guards=guards))


async def report_async(
    report: ReportRequest, now: datetime, *, committing: Callable[[], None] | None = None
) -> Outcome:
    """Record a plain result on this process's async pool (``report_steps``). ``committing`` is
    called once the record's checks passed and its transaction holds the run's row, just before
    its writes and COMMIT are sent: from then on it writes (unless the database fails), and any
    other transaction of the run waits for it."""
    return await _drive_async(report_steps(report, now=now), committing)


def _has_rows(cursor: Any) -> bool:
    """Whether a statement returned rows (as ``cursor.description is not None``, without building
    its column descriptions)."""
    import psycopg

    result = cursor.pgresult
    return result is not None and result.status == psycopg.pq.ExecStatus.TUPLES_OK


async def _drive_async(
    steps: DecisionSteps, committing: Callable[[], None] | None = None
) -> Outcome:
    import psycopg

    pool = await _pool()
    try:
        async with pool.connection() as conn:
            try:
                async with conn.pipeline() as pipeline:
                    batch = next(steps)
                    while True:
                        cursors = []
                        for sql, params in batch:
                            cursor = conn.cursor()
                            await cursor.execute(sql, params)
                            cursors.append(cursor)
                        await pipeline.sync()
                        results = [await c.fetchall() if _has_rows(c) else None for c in cursors]
                        try:
                            batch = steps.send(results)
                        except StopIteration as done:
                            outcome: Outcome = done.value
                            break
                    if committing is not None:
                        committing()
                    if outcome.writes:
                        await conn.execute(*writes_as_one(outcome.writes))
                    await conn.commit()
                return outcome
            except BaseException:
                await conn.rollback()
                raise
    except Fallback:
        raise
    except psycopg.errors.UniqueViolation:
        raise Fallback("idempotency_race") from None
    except Exception as exc:  # psycopg's errors, the pool's PoolTimeout, the network
        # The slow path answers the same request: its own 503 if the database is really gone.
        logger.warning("gateway fast path: database error, handing over to Django: %s", exc)
        _Pool.down_until = time.monotonic() + DATABASE_RETRY_SECONDS
        raise Fallback("database") from None


def writes_as_one(writes: Batch) -> Statement:
    """A decision's writes as one statement, each but the last a data-modifying ``WITH`` clause
    (PostgreSQL runs them all, on one snapshot; the constraints are checked at its end): one
    execution instead of one per write. Each write's parameters are positional, in its order."""
    *first, (last_sql, last_params) = writes
    if not first:
        return last_sql, last_params
    clauses = ", ".join(f"w{i} AS ({sql})" for i, (sql, _) in enumerate(first))
    params = [param for _, statement_params in first for param in statement_params]
    return f"WITH {clauses} {last_sql}", [*params, *last_params]


def key_lookup_sync(key_hash: str) -> KeyEntry:
    entry = _Caches.keys.get(key_hash)
    if entry is None:
        with django_connection.cursor() as cursor:
            cursor.execute(key_sql(), [key_hash])
            entry = key_entry(cursor.fetchone())
        _remember_key(key_hash, entry)
    return entry


def decide_sync(
    request: CallRequest, entry: KeyEntry, now: datetime, guards: Iterable[Guard] = ()
) -> Outcome:
    """The same statements on Django's connection (tests drive the fast path inside their
    transaction with it). ``Fallback`` rolls the savepoint back."""
    return _drive_sync(decision_steps(request, entry, now=now, guards=guards))


def report_sync(report: ReportRequest, now: datetime) -> Outcome:
    """``report_async`` on Django's connection (for tests, as ``decide_sync``)."""
    return _drive_sync(report_steps(report, now=now))


def _drive_sync(steps: DecisionSteps) -> Outcome:
    with transaction.atomic(), django_connection.cursor() as cursor:
        batch = next(steps)
        while True:
            results: list[Rows] = []
            for sql, params in batch:
                cursor.execute(sql, params)
                results.append(cursor.fetchall() if cursor.description is not None else None)
            try:
                batch = steps.send(results)
            except StopIteration as done:
                outcome: Outcome = done.value
                break
        for sql, params in outcome.writes:
            cursor.execute(sql, params)
        return outcome


# --- the answer -------------------------------------------------------------------------------


def response_headers(secure: bool, length: int) -> list[tuple[bytes, bytes]]:
    """The headers Django's middleware and DRF give this answer (pinned by a test)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"allow", b"POST, OPTIONS"),
        (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        (b"content-length", str(length).encode()),
    ]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        headers.append((b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()))
    coop = getattr(settings, "SECURE_CROSS_ORIGIN_OPENER_POLICY", None)
    if coop:
        headers.append((b"cross-origin-opener-policy", coop.encode()))
    if secure and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.append((b"strict-transport-security", hsts.encode()))
    if "opsconsole.security.ContentSecurityPolicyMiddleware" in settings.MIDDLEWARE:
        from opsconsole.security import DEFAULT_POLICY

        csp = getattr(settings, "OPSCONSOLE_CSP", DEFAULT_POLICY)
        headers.append((b"content-security-policy", csp.encode()))
    return headers


def answer_body(outcome: Outcome) -> bytes:
    return json.dumps(outcome.payload, separators=(",", ":"), ensure_ascii=False).encode()


def decision_observed(started: float) -> None:
    DECISION_SECONDS.labels("tool_call").observe(time.perf_counter() - started)
    DECISIONS.labels("tool_call", Decision.ALLOW.value, "none").inc()
    FAST_PATH.labels("served").inc()


async def broadcast_run(outcome: Outcome) -> None:
    """``run_broadcast``'s ``run.updated``, sent after commit."""
    from channels.layers import get_channel_layer  # type: ignore[import-untyped]

    layer = get_channel_layer()
    if layer is None or not outcome.broadcast:
        return
    message = {"type": "live.event", "event": "run.updated", "payload": outcome.broadcast}
    for group in (group_for("runs"), group_for("run", outcome.run.pk)):
        try:
            await layer.group_send(group, message)
        except Exception as exc:  # noqa: BLE001 - live updates degrade, decisions do not
            logger.warning("live update to %s dropped: %s", group, exc)


_background: set[asyncio.Task[None]] = set()


def spawn(work: Awaitable[None]) -> None:
    """Run ``work`` after the answer, kept referenced until it is done."""
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


def problems() -> list[str]:
    if _Caches.problems is None:
        _Caches.problems = fast_path_problems()
        if _Caches.problems:
            logger.info("gateway fast path off: %s", "; ".join(_Caches.problems))
    return _Caches.problems


async def handle(scope: dict[str, Any], run_id: int, body: bytes) -> tuple[int, list, bytes]:
    """Serve one tool-call request, or raise ``Fallback``."""
    started = time.perf_counter()
    request = request_parse(
        run_id=run_id,
        headers=scope.get("headers", []),
        scheme=scope.get("scheme", "http"),
        body=body,
    )
    if _Pool.database == "":
        _conninfo()
    if time.monotonic() < _Pool.down_until:
        raise Fallback("database")
    try:
        entry = await key_lookup_async(request.key_hash)
    except Fallback:
        raise
    except Exception as exc:  # noqa: BLE001 - the database: Django answers (its 503)
        logger.warning("gateway fast path: key lookup failed, handing over to Django: %s", exc)
        _Pool.down_until = time.monotonic() + DATABASE_RETRY_SECONDS
        raise Fallback("database") from None
    counted = await rate_count(entry, _Pool.database)
    if counted is not None and not counted.allowed:
        await rate_undo(counted)
        raise Fallback("rate_limited")  # Django counts it again and answers the 429
    try:
        outcome = await decide_async(request, entry, timezone.now())
    except Fallback:
        await rate_undo(counted)
        raise
    body_out = answer_body(outcome)
    decision_observed(started)
    spawn(broadcast_run(outcome))
    return 200, response_headers(request.secure, len(body_out)), body_out


class ToolCallFastPath:
    """ASGI middleware: tool-call POSTs the fast path can serve never reach Django; every other
    request (and every request it hands over) goes to ``app`` unchanged, body included."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = (
            PATH.fullmatch(scope.get("path", ""))
            if scope["type"] == "http" and scope.get("method") == "POST"
            else None
        )
        if match is None or problems():
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, replay(bytes(body), message, receive), send)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            status, headers, answer = await handle(scope, int(match.group(1)), bytes(body))
        except Fallback as fallback:
            FAST_PATH.labels(fallback.reason).inc()
            await self.app(scope, replay(bytes(body), None, receive), send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def replay(body: bytes, pending: dict[str, Any] | None, receive: Any) -> Any:
    """A ``receive`` that gives the body already read, then whatever the client sends next."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending is not None:
            return pending
        return await receive()

    return replayed
