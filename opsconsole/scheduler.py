"""The embedded default's beat: the periodic sweeps on a thread in the server process.

With Redis configured, Celery beat and workers do this work instead (CELERY_BEAT_SCHEDULE).
The sweeps are idempotent, so a second process running them changes nothing.
Each sweep records its heartbeat as it does under Celery (``@sweep`` in opsconsole/health.py),
so the console's background-work notice reads the same rows either way.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger("opsconsole.scheduler")
_started = threading.Event()
_stop = threading.Event()


_last_purge = 0.0
_last_rollup = 0.0
ROLLUP_SECONDS = 60


def run_due_sweeps() -> dict[str, int]:
    """One tick of the embedded beat: the same task bodies Celery beat schedules."""
    global _last_purge, _last_rollup
    from agents.tasks import expire_approvals, purge_traces, reap_runs, rollup_metrics
    from opsconsole.tasks import deliver_due_webhooks, notify_expiring_approvals

    done = {
        "expired": expire_approvals.run(),
        "reaped": reap_runs.run(),
        "expiring_notices": notify_expiring_approvals.run(),
        "webhooks": deliver_due_webhooks.run(),
    }
    if time.monotonic() - _last_purge > 3600:
        _last_purge = time.monotonic()
        done["purged"] = purge_traces.run()
    if time.monotonic() - _last_rollup > ROLLUP_SECONDS:
        _last_rollup = time.monotonic()
        done["rollups"] = rollup_metrics.run()["rollups"]
    return done


def _loop(interval: float) -> None:
    while not _stop.wait(interval):
        try:
            run_due_sweeps()
        except Exception:  # noqa: BLE001 - a failed sweep is retried on the next tick
            logger.exception("embedded sweep failed; retrying next tick")
        finally:
            close_old_connections()


def start(interval: float | None = None) -> None:
    if _started.is_set():
        return
    _started.set()
    interval = interval or float(getattr(settings, "OPSCONSOLE_SWEEP_SECONDS", 2))
    threading.Thread(target=_loop, args=(interval,), name="opsconsole-sweeps", daemon=True).start()
    logger.info("embedded scheduler started (every %.0fs)", interval)


def stop() -> None:
    _stop.set()
