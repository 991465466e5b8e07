"""The embedded default's beat: the periodic sweeps on threads in the server process.

With Redis configured, Celery beat and workers do this work instead (CELERY_BEAT_SCHEDULE).
The sweeps are idempotent, so a second process running them changes nothing.
Each sweep records its heartbeat as it does under Celery (``@sweep`` in opsconsole/health.py),
so the console's background-work notice reads the same rows either way. Which sweeps run, in
which order and how often is ``OPSCONSOLE_EMBEDDED_SWEEPS`` in settings: tasks are found by
their Celery name, so this lower layer imports no app.

No sweep waits for another. One that raises is logged and the others still run, on this tick and
the next (its missing heartbeat shows in the console after a while). Those that wait on the
outside world (``OPSCONSOLE_EMBEDDED_OUTBOUND_SWEEPS``: webhook delivery) run on a thread of their
own, so a slow receiver never delays approval expiry or the reaper.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from opsconsole.celery import app

logger = logging.getLogger("opsconsole.scheduler")
_lock = threading.Lock()
_stop = threading.Event()
_threads: list[threading.Thread] = []

# When each sweep with a period last ran (time.monotonic()), by task name.
_last_run: dict[str, float] = {}


def _task(name: str) -> Any:
    if name not in app.tasks:
        # What a worker does at start: import CELERY_IMPORTS and every app's tasks module.
        app.loader.import_default_modules()
    return app.tasks[name]


def run_due_sweeps(*, only: Collection[str] | None = None) -> dict[str, Any]:
    """One tick of the embedded beat: the same task bodies Celery beat schedules, each due sweep
    (of those named in ``only``, if given) in turn. Returns each result by its key; a sweep that
    raised is logged and left out."""
    done: dict[str, Any] = {}
    for key, name, period in settings.OPSCONSOLE_EMBEDDED_SWEEPS:
        if only is not None and name not in only:
            continue
        if period:
            if time.monotonic() - _last_run.get(name, float("-inf")) <= period:
                continue
            _last_run[name] = time.monotonic()
        try:
            result = _task(name).run()
        except Exception:  # noqa: BLE001 - one failing sweep must not stop the others
            logger.exception("embedded sweep %s failed; it runs again next tick", name)
            continue
        done[key] = result[key] if isinstance(result, dict) else result
    return done


def lanes() -> dict[str, set[str]]:
    """The sweeps by the thread that runs them."""
    every = {name for _, name, _ in settings.OPSCONSOLE_EMBEDDED_SWEEPS}
    outbound = every & set(settings.OPSCONSOLE_EMBEDDED_OUTBOUND_SWEEPS)
    return {"sweeps": every - outbound, "outbound": outbound}


def _loop(sweeps: set[str], interval: float) -> None:
    while not _stop.wait(interval):
        try:
            run_due_sweeps(only=sweeps)
        except Exception:  # noqa: BLE001 - e.g. the settings themselves; tried again next tick
            logger.exception("embedded sweeps failed; retrying next tick")
        finally:
            close_old_connections()


def start(interval: float | None = None) -> None:
    with _lock:
        if _threads:
            return
        _stop.clear()
        interval = interval or float(getattr(settings, "OPSCONSOLE_SWEEP_SECONDS", 2))
        for lane, sweeps in lanes().items():
            if not sweeps:
                continue
            thread = threading.Thread(
                target=_loop, args=(sweeps, interval), name=f"opsconsole-{lane}", daemon=True
            )
            thread.start()
            _threads.append(thread)
    logger.info("embedded scheduler started (every %.0fs)", interval)


def stop(timeout: float | None = None) -> None:
    """Stop the sweep threads, waiting (up to ``timeout`` each) for the sweeps under way."""
    with _lock:
        _stop.set()
        for thread in _threads:
            thread.join(timeout)
        _threads.clear()
