"""The append-only, hash-chained audit log: every human and policy action goes through
``audit_record``.

Each row's ``hash`` is SHA-256 over its content and ``prev_hash`` (the hash of the row before
it). Appends lock the chain head (one row), so on PostgreSQL concurrent appends queue and the
chain never forks; database triggers refuse UPDATE and DELETE of audit rows (migrations 0004 and
0006; on SQLite see ``deletion_allowed``). ``verify_chain`` (``manage.py verify_audit``) walks the
chain and names the first bad row.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from opsconsole.models import AuditChainHead, AuditEntry

HASHED_FIELDS = (
    "at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "reason",
    "before",
    "after",
)


# --- SQLite: the no-delete trigger's one exception ------------------------------------------
# SQLite has no TRUNCATE, so Django's flush (``manage.py flush``, and the test suite between
# tests) empties tables with DELETE. The SQLite trigger refuses a DELETE of audit rows unless the
# SQL function ``opsconsole_audit_unlocked()`` says yes; the console registers that function on
# its own connections and it says yes only inside ``deletion_allowed()``, which only the flush
# command uses (opsconsole/management/commands/flush.py) — the same reach TRUNCATE has on
# PostgreSQL. Elsewhere, the sqlite3 shell say, the function does not exist and the DELETE fails.
_unlocked = threading.local()


@contextmanager
def deletion_allowed() -> Iterator[None]:
    previous = getattr(_unlocked, "value", False)
    _unlocked.value = True
    try:
        yield
    finally:
        _unlocked.value = previous


def _sqlite_unlocked() -> int:
    return 1 if getattr(_unlocked, "value", False) else 0


def register_sqlite_functions(sender, connection, **kwargs) -> None:
    """``connection_created`` receiver (opsconsole/apps.py)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("opsconsole_audit_unlocked", 0, _sqlite_unlocked)


def actor_name(user) -> str:
    if user is None:
        return "system"
    return f"user:{user.get_username()}"


def _normal_json(value: Any) -> Any:
    """The value as the database gives it back (JSON round trip), so hashes computed before the
    insert match hashes computed from rows read later."""
    return json.loads(json.dumps(value, default=str))


def entry_hash(*, prev_hash: str, **content: Any) -> str:
    """The hash of one row: its content (``HASHED_FIELDS``) and the previous row's hash."""
    at: datetime = content["at"]
    document = {
        "prev_hash": prev_hash,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": content["actor"],
        "action": content["action"],
        "target_type": content["target_type"],
        "target_id": str(content["target_id"]),
        "reason": content["reason"],
        "before": _normal_json(content["before"]),
        "after": _normal_json(content["after"]),
    }
    return hashlib.sha256(_canonical(document).encode()).hexdigest()


def _canonical(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces, and numbers in one normal form, because
    PostgreSQL's jsonb gives ``1e+20`` back as ``100000000000000000000`` and ``2.50`` as ``2.5``."""
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{_canonical(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        number = Decimal(repr(value) if isinstance(value, float) else value)
        return "0" if number.is_zero() else str(number.normalize())
    return json.dumps(str(value))


def _row_hash(entry: AuditEntry) -> str:
    return entry_hash(
        prev_hash=entry.prev_hash, **{name: getattr(entry, name) for name in HASHED_FIELDS}
    )


def audit_record(
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: Any = "",
    reason: str = "",
    before: Any = None,
    after: Any = None,
) -> AuditEntry:
    """Append one audit row inside the caller's transaction: no audit row, no change.

    If the append fails (database error), the exception propagates and the caller's whole
    transaction (the change being audited) rolls back: decisions fail closed.
    """
    with transaction.atomic():
        # Lock order: callers have locked what they change; the chain head is always taken
        # last, so appends never deadlock with each other or with the gateway.
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
        content = {
            # Microseconds are what every database keeps; the hash must match what is read back.
            "at": timezone.now(),
            "actor": actor,
            "action": action,
            "target_type": target_type,
            "target_id": str(target_id),
            "reason": reason,
            "before": _normal_json(before),
            "after": _normal_json(after),
        }
        entry = AuditEntry.objects.create(
            prev_hash=head.last_hash,
            hash=entry_hash(prev_hash=head.last_hash, **content),
            **content,
        )
        head.last_hash = entry.hash
        head.last_entry_id = entry.pk
        head.length += 1
        head.save(update_fields=["last_hash", "last_entry_id", "length"])
    return entry


@dataclass
class ChainReport:
    checked: int
    ok: bool
    first_bad_id: int | None = None
    problem: str = ""


def _entries(batch: int) -> Iterator[AuditEntry]:
    last_id = 0
    while True:
        rows = list(AuditEntry.objects.filter(pk__gt=last_id).order_by("pk")[:batch])
        if not rows:
            return
        yield from rows
        last_id = rows[-1].pk


def verify_chain(*, batch: int = 2000) -> ChainReport:
    """Walk the chain in id order; report the first row whose content or link is wrong."""
    previous_hash = ""
    previous_id: int | None = None
    checked = 0
    for entry in _entries(batch):
        if entry.prev_hash != previous_hash:
            where = f"row {previous_id}" if previous_id is not None else "the start of the log"
            return ChainReport(
                checked,
                False,
                entry.pk,
                f"its prev_hash does not match the hash of {where}: a row between them was "
                "removed or changed, or rows were reordered",
            )
        if _row_hash(entry) != entry.hash:
            return ChainReport(
                checked, False, entry.pk, "its content does not match its hash: it was changed"
            )
        previous_hash, previous_id = entry.hash, entry.pk
        checked += 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is None:
        if checked:
            return ChainReport(checked, False, None, "the chain head is missing")
        return ChainReport(0, True)
    if head.last_hash != previous_hash or head.length != checked:
        return ChainReport(
            checked,
            False,
            head.last_entry_id,
            f"the chain head expects {head.length} rows ending at row {head.last_entry_id}, "
            f"but {checked} rows end at row {previous_id}: rows at the end were removed",
        )
    return ChainReport(checked, True)
