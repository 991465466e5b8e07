"""Audit integrity: the log is hash-chained and append-only, and ``verify_audit`` names the first
tampered row. The audit log page shows before and after, filters, and pages by id."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from agents.policy.services import kill_switch_set
from opsconsole.audit import audit_record, verify_chain
from opsconsole.models import AuditChainHead, AuditEntry
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db


@contextmanager
def guard_lifted() -> Iterator[None]:
    """Tamper as someone with raw database access would: lift the append-only trigger.

    Inside the test's transaction, so the DDL is rolled back with everything else."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "ALTER TABLE opsconsole_auditentry DISABLE TRIGGER opsconsole_audit_append_only"
            )
        else:
            cursor.execute("DROP TRIGGER opsconsole_audit_no_update")
            cursor.execute("DROP TRIGGER opsconsole_audit_no_delete")
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "ALTER TABLE opsconsole_auditentry ENABLE TRIGGER opsconsole_audit_append_only"
            )


def record(n: int) -> list[AuditEntry]:
    return [
        audit_record(
            actor="user:ada",
            action="policy.publish",
            target_type="policy",
            target_id=i,
            reason=f"change {i}",
            before={"n": i},
            after={"n": i + 1},
        )
        for i in range(n)
    ]


def verify() -> str:
    """Run the command as an operator would; returns its output or raises CommandError."""
    from io import StringIO

    out = StringIO()
    call_command("verify_audit", stdout=out, stderr=StringIO())
    return out.getvalue()


def test_each_row_links_to_the_one_before_it():
    first, second, third = record(3)

    assert len(first.hash) == 64
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    head = AuditChainHead.objects.get(pk=1)
    assert (head.last_hash, head.last_entry_id) == (third.hash, third.pk)


def test_an_intact_log_verifies(admin):
    record(3)
    kill_switch_set(mode="disable_writes", reason="vendor outage", actor="user:ada")
    kill_switch_set(mode="off", reason="", actor="user:ada")

    output = verify()

    count = AuditEntry.objects.count()
    assert count >= 5
    assert f"audit chain intact: {count} rows" in output


def test_numbers_survive_the_database_round_trip_in_the_hash():
    """PostgreSQL's jsonb gives 1e20 back as an integer and drops trailing zeros."""
    audit_record(
        actor="system",
        action="policy.publish",
        target_type="policy",
        after={"big": 1e20, "cost": 2.50, "list": [1, 2.0, -0.0, 0.1], "text": "é ✓"},
    )
    assert verify_chain().ok


def test_updating_an_audit_row_is_refused_by_the_database():
    (entry,) = record(1)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).update(reason="nothing to see")

    entry.refresh_from_db()
    assert entry.reason == "change 0"


def test_deleting_an_audit_row_is_refused_by_the_database():
    (entry,) = record(1)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).delete()

    assert AuditEntry.objects.filter(pk=entry.pk).exists()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite guard's own exception")
def test_on_sqlite_only_the_flush_command_may_empty_the_audit_log(tmp_path):
    """SQLite has no TRUNCATE: Django's flush deletes, and only it gets through the trigger."""
    import importlib
    import sqlite3

    from opsconsole.audit import deletion_allowed

    (entry,) = record(1)
    with deletion_allowed(), transaction.atomic():
        AuditEntry.objects.filter(pk=entry.pk).delete()
        assert not AuditEntry.objects.filter(pk=entry.pk).exists()
        transaction.set_rollback(True)

    # Outside the console (a plain sqlite3 connection, as the sqlite3 shell has) the trigger's
    # function does not exist, so the DELETE fails there too.
    trigger = importlib.import_module("opsconsole.migrations.0006_audit_no_delete_on_sqlite")
    outside = sqlite3.connect(tmp_path / "outside.sqlite3")
    outside.execute("CREATE TABLE opsconsole_auditentry (id INTEGER PRIMARY KEY)")
    outside.execute(trigger.SQLITE_TRIGGER)
    outside.execute("INSERT INTO opsconsole_auditentry (id) VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="opsconsole_audit_unlocked"):
        outside.execute("DELETE FROM opsconsole_auditentry")
    outside.close()


def test_a_changed_row_is_reported_with_its_id_and_a_failing_exit_status():
    entries = record(5)
    with guard_lifted():
        AuditEntry.objects.filter(pk=entries[2].pk).update(reason="nothing to see")

    with pytest.raises(CommandError) as failure:
        verify()

    message = str(failure.value)
    assert f"audit chain broken at row {entries[2].pk}" in message
    assert "content does not match its hash" in message
    assert failure.value.returncode == 1


def test_a_row_rewritten_with_a_fresh_hash_breaks_the_next_link():
    """A forger who recomputes the changed row's hash still breaks the row after it."""
    from opsconsole.audit import entry_hash

    entries = record(4)
    target = AuditEntry.objects.get(pk=entries[1].pk)
    forged = entry_hash(
        prev_hash=target.prev_hash,
        at=target.at,
        actor=target.actor,
        action=target.action,
        target_type=target.target_type,
        target_id=target.target_id,
        reason="forged",
        before=target.before,
        after=target.after,
    )
    with guard_lifted():
        AuditEntry.objects.filter(pk=target.pk).update(reason="forged", hash=forged)

    report = verify_chain()

    assert not report.ok
    assert report.first_bad_id == entries[2].pk
    assert f"hash of row {entries[1].pk}" in report.problem


def test_a_removed_row_is_reported_at_the_row_after_it():
    entries = record(5)
    with guard_lifted():
        AuditEntry.objects.filter(pk=entries[2].pk).delete()

    with pytest.raises(CommandError, match=f"broken at row {entries[3].pk}: its prev_hash"):
        verify()


def test_removed_rows_at_the_end_are_reported_against_the_chain_head():
    entries = record(4)
    with guard_lifted():
        AuditEntry.objects.filter(pk__in=[entries[2].pk, entries[3].pk]).delete()

    report = verify_chain()

    assert not report.ok
    assert report.first_bad_id == entries[3].pk
    assert "rows at the end were removed" in report.problem


def test_verify_warns_when_the_guard_is_gone():
    record(2)
    from io import StringIO

    err = StringIO()
    with guard_lifted():
        call_command("verify_audit", stdout=StringIO(), stderr=err)

    assert "append-only trigger on the audit table is missing or disabled" in err.getvalue()


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_queue_on_the_chain_head_and_never_fork():
    barrier = threading.Barrier(8)

    def append(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(5):
                with transaction.atomic():
                    audit_record(
                        actor=f"user:w{worker}",
                        action="test.append",
                        target_type="test",
                        target_id=f"{worker}-{i}",
                    )
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(append, range(8)))

    entries = list(AuditEntry.objects.filter(action="test.append").order_by("pk"))
    assert len(entries) == 40
    report = verify_chain()
    assert report.ok, report
    prev_hashes = [e.prev_hash for e in AuditEntry.objects.order_by("pk")]
    assert len(set(prev_hashes)) == len(prev_hashes)  # no two rows follow the same row


# --- the audit log page -----------------------------------------------------------------------


def test_the_audit_log_shows_before_and_after_and_filters(oncall, admin, agent, start_run):
    run = start_run()
    logged_in(oncall).post(reverse("runs:cancel", args=[run["id"]]), {"reason": "stuck"})
    kill_switch_set(mode="disable_writes", reason="outage", actor="user:ada-admin")
    client = logged_in(oncall)
    page = client.get(reverse("audit")).content.decode()
    assert "run.cancel" in page and "kill_switch.set" in page and "agent.create" in page
    assert "&quot;mode&quot;: &quot;disable_writes&quot;" in page  # after
    assert "&quot;mode&quot;: &quot;off&quot;" in page  # before
    only = client.get(reverse("audit"), {"action": "run."})
    assert {e.action for e in only.context["entries"]} == {"run.cancel"}
    by_actor = client.get(reverse("audit"), {"actor": "olivia"})
    assert {e.actor for e in by_actor.context["entries"]} == {"user:olivia-oncall"}
    target = client.get(reverse("audit"), {"target_type": "run", "target_id": str(run["id"])})
    assert len(target.context["entries"]) == 1


def test_the_audit_log_pages_by_id_with_constant_queries(oncall, django_assert_num_queries):
    for i in range(60):
        audit_record(actor="system", action="test.thing", target_type="thing", target_id=i)
    client = logged_in(oncall)
    client.get(reverse("audit"))
    # session, user, role, kill switch, nav count, degraded tools, paused agents, the page
    with django_assert_num_queries(8):
        first = client.get(reverse("audit"))
    assert len(first.context["entries"]) == 50
    before = first.context["entries"][-1].pk
    with django_assert_num_queries(8):
        second = client.get(reverse("audit"), {"before": before})
    ids = [e.pk for e in first.context["entries"]] + [e.pk for e in second.context["entries"]]
    assert len(ids) == len(set(ids)) == AuditEntry.objects.count()
