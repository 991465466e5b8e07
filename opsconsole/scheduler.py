"""The embedded default's beat: the periodic sweeps on a thread in the server process.

With Redis configured, Celery beat and workers do this work instead (CELERY_BEAT_SCHEDULE).
The sweeps are idempotent, so a second process running them changes nothing.
Each sweep records its heartbeat as it does under Celery (``@sweep`` in opsconsole/health.py),
so the console's background-work notice reads the same rows either way. Which sweeps run, in
which order and how often is ``OPSCONSOLE_EMBEDDED_SWEEPS`` in settings: tasks are found by
their Celery name, so this lower layer imports no app.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from opsconsole.celery import app

logger = logging.getLogger("opsconsole.scheduler")
_started = threading.Event()
_stop = threading.Event()

# When each sweep with a period last ran (time.monotonic()), by task name.
_last_run: dict[str, float] = {}


def _task(name: str) -> Any:
    if name not in app.tasks:
        # What a worker does at start: import CELERY_IMPORTS and every app's tasks module.
        app.loader.import_default_modules()
    return app.tasks[name]


def run_due_sweeps() -> dict[str, int]:
    """One tick of the embedded beat: the same task bodies Celery beat schedules."""
    done: dict[str, int] = {}
    for key, name, period in settings.OPSCONSOLE_EMBEDDED_SWEEPS:
        if period:
            if time.monotonic() - _last_run.get(name, float("-inf")) <= period:
                continue
            _last_run[name] = time.monotonic()
        result = _task(name).run()
        done[key] = result[key] if isinstance(result, dict) else result
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
