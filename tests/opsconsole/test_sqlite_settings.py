"""SQLite gets the same settings however it is chosen: immediate transactions, a busy timeout, WAL.

Each case builds the settings in a fresh interpreter (settings are read once per process) on a
database file of its own, then has 20 threads each read a counter and write it back five times in
a transaction: with deferred transactions some of them fail with "database is locked" (the 503s
two racing reviewers saw) or lose an update; with immediate ones they queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RACE = r"""
import json, threading, time
import django
django.setup()
from django.conf import settings
from django.db import OperationalError, connection, transaction

with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode")
    journal_mode = cursor.fetchone()[0]
    cursor.execute("PRAGMA busy_timeout")
    busy_timeout = cursor.fetchone()[0]
    cursor.execute("CREATE TABLE counter (n integer)")
    cursor.execute("INSERT INTO counter VALUES (0)")
connection.close()

errors = []

def bump():
    try:
        for _ in range(5):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT n FROM counter")
                (n,) = cursor.fetchone()
                time.sleep(0.002)
                cursor.execute("UPDATE counter SET n = %s", [n + 1])
    except OperationalError as error:
        errors.append(str(error))
    finally:
        connection.close()

threads = [threading.Thread(target=bump) for _ in range(20)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with connection.cursor() as cursor:
    cursor.execute("SELECT n FROM counter")
    (count,) = cursor.fetchone()
database = settings.DATABASES["default"]
print(json.dumps({
    "engine": database["ENGINE"],
    "options": database.get("OPTIONS", {}),
    "journal_mode": journal_mode,
    "busy_timeout": busy_timeout,
    "errors": errors,
    "count": count,
}))
"""


def race(tmp_path: Path, database_url: str | None) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(DJANGO_SETTINGS_MODULE="opsconsole.settings", OPSCONSOLE_DATA_DIR=str(tmp_path))
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    finished = subprocess.run(
        [sys.executable, "-c", RACE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "chosen_by",
    ["the embedded default", "DATABASE_URL=sqlite:///<file>"],
)
def test_sqlite_queues_concurrent_writers_in_wal_however_it_is_chosen(tmp_path, chosen_by):
    url = (
        None if chosen_by == "the embedded default" else f"sqlite:///{tmp_path / 'chosen.sqlite3'}"
    )

    result = race(tmp_path, url)

    assert result["engine"] == "django.db.backends.sqlite3"
    assert result["options"]["transaction_mode"] == "IMMEDIATE"
    assert result["options"]["timeout"] >= 20
    assert result["busy_timeout"] >= 20_000
    assert result["journal_mode"] == "wal"
    assert result["errors"] == []
    assert result["count"] == 100


def test_options_in_the_url_win_over_the_defaults(tmp_path):
    url = f"sqlite:///{tmp_path / 'chosen.sqlite3'}?timeout=45"

    result = race(tmp_path, url)

    assert result["options"]["timeout"] == 45
    assert result["options"]["transaction_mode"] == "IMMEDIATE"
    assert result["journal_mode"] == "wal"
