"""The embedded default's beat: the periodic sweeps on a thread in the server process.

With Redis configured, Celery beat and workers do this work instead (CELERY_BEAT_SCHEDULE).
The sweeps are idempotent, so a second process running them changes nothing.
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


def run_due_sweeps() -> dict[str, int]:
    from agents.tasks import expire_approvals, reap_runs

    return {"expired": expire_approvals.run(), "reaped": reap_runs.run()}


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
    time.sleep(0)
