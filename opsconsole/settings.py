"""Settings, read from environment variables only (see the README's configuration table).

With nothing set the console runs on the embedded default: SQLite in ``var/``, an in-memory
channel layer and background work in-process. ``DATABASE_URL`` and ``REDIS_URL`` switch to
PostgreSQL and Redis.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DATA_DIR = Path(env_str("OPSCONSOLE_DATA_DIR", str(BASE_DIR / "var")))


def _secret_key() -> str:
    configured = env_str("DJANGO_SECRET_KEY")
    if configured:
        return configured
    # Generated once and kept beside the embedded database, so sessions survive restarts.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "template_partials",
    "channels",
    "opsconsole",
    "agents",
    "approvals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "opsconsole.security.ContentSecurityPolicyMiddleware",
    "opsconsole.middleware.StaticFilesMiddleware",  # WhiteNoise, async-capable
    "opsconsole.middleware.ControlPlaneUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "opsconsole.urls"
ASGI_APPLICATION = "opsconsole.asgi.application"
WSGI_APPLICATION = "opsconsole.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
DB_CONNECT_TIMEOUT = env_int("OPSCONSOLE_DB_CONNECT_TIMEOUT", 3)
# SQLite, however it is chosen (the embedded default or DATABASE_URL=sqlite:///...): IMMEDIATE
# makes every transaction take the write lock up front, so concurrent writers queue (for up to
# the busy timeout) instead of failing with "database is locked" when a reader tries to write;
# WAL lets readers go on while one writes. Options in the URL win.
SQLITE_OPTIONS = {
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL",
}
if DATABASE_URL:
    _database = dj_database_url.parse(DATABASE_URL)
    if _database["ENGINE"] == "django.db.backends.postgresql":
        # Under ASGI every request runs in its own thread, so persistent per-thread connections
        # would pile up; a per-process psycopg pool hands connections back after each request.
        # A dead database must turn into a quick 503, never a hung agent: short connect and
        # pool timeouts.
        _database["CONN_MAX_AGE"] = 0
        _database.setdefault("OPTIONS", {}).update(
            {
                "connect_timeout": DB_CONNECT_TIMEOUT,
                "pool": {
                    "min_size": env_int("OPSCONSOLE_DB_POOL_MIN", 2),
                    "max_size": env_int("OPSCONSOLE_DB_POOL_MAX", 32),
                    # How long a request may queue for a free connection before it is a 503.
                    "timeout": env_int("OPSCONSOLE_DB_POOL_TIMEOUT", 10),
                },
            }
        )
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _database = {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "opsconsole.sqlite3"}
_database.setdefault("TEST", {})
if _database["ENGINE"] == "django.db.backends.sqlite3":
    _database["OPTIONS"] = {**SQLITE_OPTIONS, **_database.get("OPTIONS", {})}
    _database["TEST"]["NAME"] = str(DATA_DIR / "test_opsconsole.sqlite3")
else:
    _database["TEST"]["NAME"] = env_str("OPSCONSOLE_TEST_DATABASE", f"test_{_database['NAME']}")
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and Celery ----------------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # channels_redis waits for messages with a 5 s BZPOPMIN; redis-py 8 reads with a 5 s
            # socket timeout by default, which cut every idle websocket every 5 s. A longer
            # read timeout keeps idle sockets open and still notices a dead Redis.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}]},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    # Without a broker, tasks run in-process and the periodic sweeps run on a thread
    # started with the server (see opsconsole/scheduler.py).
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 30
CELERY_TASK_TIME_LIMIT = 60
CELERY_TIMEZONE = "UTC"

# The cache holds rate-limit counters: Redis when configured (shared by every worker and machine),
# else this process's memory (the embedded default is one process). Short socket timeouts: a
# dead Redis must cost a request milliseconds, not seconds (rate limiting then fails open).
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "opsconsole",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth -----------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(DATA_DIR / "staticfiles")))
# WhiteNoise warns on every start when the folder is missing (before collectstatic).
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- API ------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["opsconsole.authentication.BearerKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["opsconsole.limits.JSONParser"],
    "EXCEPTION_HANDLER": "opsconsole.api_errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Ops Console API",
    "DESCRIPTION": "The tool gateway agents call before every tool call, and the reviewer API.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "opsconsole.schema.add_long_poll_path",
        "opsconsole.schema.add_error_responses",
        "opsconsole.schema.add_links",
    ],
}
# Requests larger than this are refused with 413 before they are parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("OPSCONSOLE_MAX_BODY_BYTES", 1_048_576)
# OTLP trace ingestion (agents/telemetry, docs/telemetry.md): a batch's body as sent and once
# decompressed (413 past either; the OTLP specification suggests 64 MiB), the export requests a
# worker holds before answering 503 + Retry-After, and how long an observed run waits for its
# root span (no new span meanwhile) before it is ended without it.
OPSCONSOLE_OTLP_MAX_BODY_BYTES = env_int("OPSCONSOLE_OTLP_MAX_BODY_BYTES", 32 * 1024 * 1024)
OPSCONSOLE_OTLP_MAX_DECODED_BYTES = env_int("OPSCONSOLE_OTLP_MAX_DECODED_BYTES", 64 * 1024 * 1024)
OPSCONSOLE_OTLP_MAX_PENDING = env_int("OPSCONSOLE_OTLP_MAX_PENDING", 8)
OPSCONSOLE_OTLP_ROOT_WAIT_SECONDS = env_int("OPSCONSOLE_OTLP_ROOT_WAIT_SECONDS", 300)
# Paths whose bodies have a cap of their own instead of DATA_UPLOAD_MAX_MEMORY_SIZE
# (opsconsole/limits.py RequestBodyLimit).
OPSCONSOLE_BODY_LIMITS = {
    path: OPSCONSOLE_OTLP_MAX_BODY_BYTES for path in ("/v1/traces", "/v1/metrics", "/v1/logs")
}


def env_rate(name: str, default: str) -> str | None:
    """A rate such as ``600/min`` (periods: s, min, h, day); ``off`` disables the limit."""
    raw = os.environ.get(name, "").strip().lower() or default
    if raw in {"off", "none", "0"}:
        return None
    if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", raw):
        raise ImproperlyConfigured(f"{name} must look like 600/min or be off, not {raw!r}")
    return raw


# Per-agent rate limits (opsconsole/limits.py): over the limit is a 429 with Retry-After.
OPSCONSOLE_RATE_LIMITS = {
    "runs": env_rate("OPSCONSOLE_RATE_RUNS", "60/min"),
    "tool_calls": env_rate("OPSCONSOLE_RATE_TOOL_CALLS", "600/min"),
    # OTLP trace export requests (batches of up to 512 spans by default), per agent.
    "otlp": env_rate("OPSCONSOLE_RATE_OTLP", "1200/min"),
}
OPSCONSOLE_RATE_LIMIT_CACHE = "default"
# A tool call's arguments larger than this (as JSON) are refused with 413 args_too_large.
OPSCONSOLE_MAX_ARGS_BYTES = env_int("OPSCONSOLE_MAX_ARGS_BYTES", 65_536)
# Web login: this many failed sign-ins per username (or per client address, times four) within
# the window lock further attempts out until the window ends (opsconsole/login.py).
OPSCONSOLE_LOGIN_MAX_FAILURES = env_int("OPSCONSOLE_LOGIN_MAX_FAILURES", 5)
OPSCONSOLE_LOGIN_WINDOW_SECONDS = env_int("OPSCONSOLE_LOGIN_WINDOW_SECONDS", 900)
# The gateway's fast path (agents/gateway/core.py): plain allowed tool calls answered before Django,
# on PostgreSQL; off, every call goes through Django (the same decisions, about ten times the CPU).
OPSCONSOLE_GATEWAY_FAST_PATH = env_bool("OPSCONSOLE_GATEWAY_FAST_PATH", True)
OPSCONSOLE_GATEWAY_POOL_MAX = env_int("OPSCONSOLE_GATEWAY_POOL_MAX", 16)
# The longest a client may long-poll a pending approval.
OPSCONSOLE_MAX_WAIT_SECONDS = 30
# Extra time a silent run gets past its max_seconds before the reaper stops it.
OPSCONSOLE_REAP_GRACE_SECONDS = env_int("OPSCONSOLE_REAP_GRACE_SECONDS", 10)
# Webhook retries back off from this many seconds, doubling per attempt (capped at 10 minutes).
OPSCONSOLE_WEBHOOK_BACKOFF_SECONDS = env_int("OPSCONSOLE_WEBHOOK_BACKOFF_SECONDS", 5)
# One webhook delivery (name lookup, connect, send, the receiver's status line and headers) gets
# this many seconds in all; a receiver answering one byte per second is given up then. At most
# 40, so a delivery ends within its Celery task's 50 s soft time limit (opsconsole/tasks.py).
OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS = env_int("OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS", 10)
if not 1 <= OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS <= 40:
    raise ImproperlyConfigured("OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS must be between 1 and 40")
# Webhooks may go to loopback and private addresses only when this is true (a receiver inside the
# same network); link-local (cloud metadata) and unspecified addresses are refused regardless.
OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = env_bool("OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE", False)
# A pending approval this close to expiring gets an "about to expire" notice.
OPSCONSOLE_APPROVAL_EXPIRING_SECONDS = env_int("OPSCONSOLE_APPROVAL_EXPIRING_SECONDS", 60)
# Trace payloads of runs that ended more than this many days ago are purged (0: keep forever).
OPSCONSOLE_RETENTION_DAYS = env_int("OPSCONSOLE_RETENTION_DAYS", 30)
# In-process scheduler for the embedded default (no Celery beat).
OPSCONSOLE_EMBEDDED_SCHEDULER = env_bool("OPSCONSOLE_EMBEDDED_SCHEDULER", not REDIS_URL)
# When set, /metrics answers only scrapers sending "Authorization: Bearer <token>".
OPSCONSOLE_METRICS_TOKEN = env_str("OPSCONSOLE_METRICS_TOKEN")

# --- Production hardening -------------------------------------------------------------------

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG and env_bool("DJANGO_SECURE", False):
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("OPSCONSOLE_LOG_LEVEL", "WARNING")},
    "loggers": {"opsconsole": {"level": env_str("OPSCONSOLE_LOG_LEVEL", "INFO")}},
}

# --- Wiring: what the lower layer (opsconsole/) reads from the apps, named here -------------
# opsconsole/ imports nothing from agents/ or approvals/ outside URL wiring; what it must show or
# run of theirs is named by these settings (import-linter holds the rule in CI).

# Bearer credentials by prefix (opsconsole/keys.py): the model holding their hashes, and the
# field of that model naming whom a key authenticates.
OPSCONSOLE_BEARER_KEYS = {
    "aok_": ("agents.AgentKey", "agent"),
    "aou_": ("opsconsole.UserToken", "user"),
}
# Every page's chrome (opsconsole/context_processors.py): the kill-switch banner and the
# approvals badge, each read by the app that owns it.
OPSCONSOLE_CONSOLE_STATE = {
    "kill_switch": "agents.policy.selectors.kill_switch_current",
    "pending_approvals": "approvals.selectors.approval_pending_count",
    "paused_agents": "agents.registry.selectors.paused_agents",
    "degraded_tools": "agents.tools.selectors.degraded_tools",
}
# Celery task modules inside the apps' packages (autodiscovery finds only <app>/tasks.py).
CELERY_IMPORTS = ["agents.gateway.tasks", "agents.monitoring.tasks", "agents.telemetry.tasks"]
# The embedded default's beat (opsconsole/scheduler.py), in this order on every tick:
# (name in its result, Celery task, seconds between runs; 0 = every tick).
OPSCONSOLE_EMBEDDED_SWEEPS = [
    ("expired", "approvals.expire_due", 0),
    ("reaped", "runs.reap_silent", 0),
    ("expiring_notices", "approvals.notify_expiring", 0),
    ("webhooks", "webhooks.deliver_due", 0),
    ("purged", "traces.purge", 3600),
    ("rollups", "monitoring.rollup", 60),
    ("observed_finalized", "telemetry.finalize", 30),
]
# Of those, the sweeps that wait on the outside world (webhook receivers): they run on a thread of
# their own, so a slow receiver never delays approval expiry or the reaper.
OPSCONSOLE_EMBEDDED_OUTBOUND_SWEEPS = ["webhooks.deliver_due"]

# The periodic sweeps (the embedded default runs the same ones: opsconsole/scheduler.py).
CELERY_BEAT_SCHEDULE = {
    "expire-approvals": {"task": "approvals.expire_due", "schedule": 2.0},
    "notify-expiring-approvals": {"task": "approvals.notify_expiring", "schedule": 15.0},
    "reap-silent-runs": {"task": "runs.reap_silent", "schedule": 5.0},
    "deliver-due-webhooks": {"task": "webhooks.deliver_due", "schedule": 5.0},
    "purge-old-traces": {"task": "traces.purge", "schedule": 3600.0},
    "rollup-metrics": {"task": "monitoring.rollup", "schedule": 60.0},
    "finalize-observed-runs": {"task": "telemetry.finalize", "schedule": 30.0},
}

# --- Background-work health (opsconsole/health.py) ------------------------------------------
# The console warns that background work is behind when a periodic sweep has not completed for
# three of its intervals, and never sooner than this many seconds (Celery worker, beat or Redis
# down; see docs/reliability.md).
OPSCONSOLE_SWEEP_STALE_SECONDS = env_int("OPSCONSOLE_SWEEP_STALE_SECONDS", 30)
# A worker whose broker went away keeps trying to reconnect (every 2, 4, ... up to 30 s) instead
# of giving up after 100 attempts (about 45 minutes), so it resumes by itself when Redis returns.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
