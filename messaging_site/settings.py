"""Settings for the message sending service.

Everything that differs between deployments is read here, once, from the
environment (see .env.example). Apps read their own namespaced settings
through an accessor (dispatcher.conf) rather than os.environ.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from csp.constants import NONE as CSP_NONE
from csp.constants import SELF as CSP_SELF
from csp.constants import UNSAFE_INLINE as CSP_UNSAFE_INLINE
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from callbacks.conf import RETRY_SCHEDULE_SECONDS as CALLBACK_RETRY_SCHEDULE_SECONDS
from dispatcher.conf import SPECS as DISPATCHER_SETTING_SPECS
from dispatcher.conf import task_timeouts
from dispatcher.providers_conf import provider_specs_from_env
from messaging_site.env import (
    default_qcluster_workers,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_rate,
    env_retry_schedule,
    env_secret,
    env_str,
    env_url,
)
from messaging_site.formats.en import formats as site_formats
from messaging_site.logging_config import LOG_FORMATS, build_logging
from restapi.database_outage import ReachabilityRecordingConnection
from retention.conf import MAX_DAYS as RETENTION_MAX_DAYS
from retention.conf import MAX_RUN_SECONDS as RETENTION_MAX_RUN_SECONDS
from retention.conf import RETENTION_STATUSES

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_STATE_DIR = Path(env_str("LOCAL_STATE_DIR", str(BASE_DIR / ".local")))

# Off unless asked for: a deployment that forgets DEBUG gets production behaviour,
# and "production" below means exactly this, DEBUG off.
DEBUG = env_bool("DEBUG", False)
_MAKE_A_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(50))"'
SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set in the environment (`make run` writes a random one to .env)")
    raise ImproperlyConfigured(
        f"SECRET_KEY (or SECRET_KEY_FILE) must be set in production (DEBUG is off); make one with: {_MAKE_A_KEY}"
    )
# Refused at start-up rather than left to `check --deploy`, which nobody may run:
# a guessable key lets anyone forge sessions and password-reset links. The rule
# is Django's own (security.W009), so the two never disagree.
if not DEBUG and (
    len(SECRET_KEY) < SECRET_KEY_MIN_LENGTH
    or len(set(SECRET_KEY)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
    or SECRET_KEY.startswith(SECRET_KEY_INSECURE_PREFIX)
):
    raise ImproperlyConfigured(
        f"SECRET_KEY is too weak for production (DEBUG is off): it needs at least {SECRET_KEY_MIN_LENGTH} "
        f"characters, at least {SECRET_KEY_MIN_UNIQUE_CHARACTERS} different ones, and no "
        f"{SECRET_KEY_INSECURE_PREFIX!r} prefix; make one with: {_MAKE_A_KEY}"
    )
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- HTTPS and security headers ---------------------------------------------------
# Production defaults are the safe ones, so `manage.py check --deploy` is clean;
# a deployment serving plain http (docker-compose without a TLS proxy, `make run`)
# turns them off explicitly. In DEBUG they all default to off.
# Behind a TLS-terminating proxy, SECURE_PROXY_SSL_HEADER=true trusts its
# X-Forwarded-Proto: https. Only set it if the proxy overwrites that header on
# every request, or a client could claim https over plain http.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("SECURE_PROXY_SSL_HEADER", False) else None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Probes and Prometheus talk to the container directly over http; redirecting them
# to https would fail the health checks. The paths have no leading slash.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# No page script reads the CSRF cookie (the admin and Swagger UI take the token
# from the page), so JavaScript need not see either cookie.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
# Browsers only honour HSTS on https responses, so these are harmless over http.
# Set SECURE_HSTS_INCLUDE_SUBDOMAINS / SECURE_HSTS_PRELOAD to false if some
# subdomain of the host still serves plain http.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp) for every page: the admin, the dashboard and
# the API docs. Everything they load comes from this site (Swagger UI and Redoc
# from drf-spectacular-sidecar, Redoc's bundle less the logo it would fetch from
# its CDN: restapi/docs.py), and no page runs inline script,
# so script-src is 'self' alone: injected markup could not run script. Styles may
# be inline: Redoc writes its styles at run time (styled-components); the admin's
# own pages take theirs from static files. Redoc's search runs in a worker made from a blob:
# URL; Swagger UI and the admin draw some icons from data: URLs.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [CSP_SELF],
        "script-src": [CSP_SELF],
        "style-src": [CSP_SELF, CSP_UNSAFE_INLINE],
        "img-src": [CSP_SELF, "data:"],
        "font-src": [CSP_SELF, "data:"],
        "worker-src": [CSP_SELF, "blob:"],
        "connect-src": [CSP_SELF],
        "object-src": [CSP_NONE],
        "base-uri": [CSP_SELF],
        "form-action": [CSP_SELF],
        "frame-ancestors": [CSP_NONE],
    }
}

INSTALLED_APPS = [
    # django.contrib.admin with this service's name and its apps in the operators' order.
    "messaging_site.admin_site.MessagingAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Our apps, from the outermost layer down (docs/ARCHITECTURE.md; import-linter
    # holds the direction): each imports only those listed after it. The
    # dispatcher comes before django_q so that its `qcluster` command is the one
    # that runs (a sentinel that stops gracefully on SIGTERM).
    "seed_api",
    "dispatcher",
    "callbacks",
    "message_templates",
    "retention",
    "consent",
    "messages_app",
    "audit",
    "restapi",
    "devtools",
    "django_q",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every answer (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # 503 with Retry-After when the database cannot serve a request, never a 500; at once
    # while PostgreSQL is known to be unreachable (static files above are still served).
    "restapi.defaults.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes requires: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "messaging_site.urls"
APPEND_SLASH = True

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The site's own overrides of Django's admin templates (admin/base_site.html),
        # searched before the apps' folders, where Django's admin comes first.
        "DIRS": [BASE_DIR / "messaging_site" / "templates"],
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

WSGI_APPLICATION = "messaging_site.wsgi.application"
ASGI_APPLICATION = "messaging_site.asgi.application"

# Database: PostgreSQL in production (DATABASE_URL), a SQLite file otherwise so
# a newcomer needs no server. SKIP LOCKED claiming needs PostgreSQL to scale out;
# on SQLite every write transaction is serialised instead (one host only).
_DEFAULT_SQLITE = f"sqlite:///{LOCAL_STATE_DIR / 'db.sqlite3'}"
try:
    DATABASES = {
        "default": dj_database_url.parse(
            env_str("DATABASE_URL", _DEFAULT_SQLITE),
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
            conn_health_checks=True,
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
# A connection attempt to a PostgreSQL that takes connections and never answers (a
# partition, a hung server) would otherwise wait for ever: a qcluster worker, or the
# pool's own threads, which then never reconnect. DATABASE_URL's ?connect_timeout= wins.
DATABASE_CONNECT_TIMEOUT_SECONDS = env_int("DATABASE_CONNECT_TIMEOUT_SECONDS", 5, minimum=2, maximum=600)
# A pool of connections per process instead of one persistent connection per
# thread: the web's gevent workers (gunicorn.conf.py sets this) run each request in
# a greenlet of its own, which could never reuse a connection. 0: no pool.
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 0, minimum=0, maximum=1000)
# How long a request waits for a free pooled connection before it is answered 503 with
# Retry-After (restapi.defaults): a burst beyond what the pool serves is refused, so the
# client backs off, rather than queued for longer than its own timeout.
DATABASE_POOL_TIMEOUT_SECONDS = env_float("DATABASE_POOL_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=300.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT_SECONDS)
if DATABASE_POOL_MAX_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django refuses both at once
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": min(2, DATABASE_POOL_MAX_SIZE),
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
        # Notes whether each attempt to connect worked, so that while PostgreSQL is down
        # requests are refused at once instead of each waiting the timeout (restapi.database_outage).
        "connection_class": ReachabilityRecordingConnection,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    LOCAL_STATE_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # Take the write lock at BEGIN so concurrent writers queue up instead of
        # failing with "database is locked" halfway through a transaction.
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Caches: Redis when REDIS_URL is set; otherwise a file cache, which needs no
# server and is shared by the web and qcluster processes on one host.
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
DELIVERY_CACHE_ALIAS = "deliveries"
if REDIS_URL:
    _redis_options = {
        "CLIENT_CLASS": "django_redis.client.DefaultClient",
        "SOCKET_CONNECT_TIMEOUT": 2,
        "SOCKET_TIMEOUT": 2,
    }
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": _redis_options,
        },
        # Delivery records are read by other systems, so they are stored under the
        # bare key `messages:<messageId>` as plain JSON, not pickled and prefixed.
        DELIVERY_CACHE_ALIAS: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_FUNCTION": "dispatcher.engine.delivery_cache.bare_key",
            "OPTIONS": {**_redis_options, "SERIALIZER": "django_redis.serializers.json.JSONSerializer"},
        },
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(LOCAL_STATE_DIR / "cache" / "default"),
        },
        DELIVERY_CACHE_ALIAS: {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(LOCAL_STATE_DIR / "cache" / "deliveries"),
            "KEY_FUNCTION": "dispatcher.engine.delivery_cache.bare_key",
            "TIMEOUT": None,
        },
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# One way to write a time everywhere in the admin: "2025-01-31 09:00:05 UTC". The
# format module wins wherever localisation is on; the settings cover where it is off.
FORMAT_MODULE_PATH = ["messaging_site.formats"]
DATETIME_FORMAT = site_formats.DATETIME_FORMAT
DATE_FORMAT = site_formats.DATE_FORMAT
TIME_FORMAT = site_formats.TIME_FORMAT

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# The site's own static files (the admin's stylesheet), beside the apps' static/ folders.
STATICFILES_DIRS = [BASE_DIR / "messaging_site" / "static"]

# --- Messages -----------------------------------------------------------------
MESSAGE_MAX_LENGTH = env_int("MESSAGE_MAX_LENGTH", 1000, minimum=1, maximum=100_000)
MESSAGE_BULK_MAX_ITEMS = env_int("MESSAGE_BULK_MAX_ITEMS", 1000, minimum=1, maximum=100_000)
# Larger request bodies are refused before they are read into memory. The default
# fits the largest bulk request the limits above allow in any JSON encoding: a
# character takes up to 12 bytes when escaped (an emoji is a surrogate pair,
# \ud83d\ude00, and Python's json.dumps escapes all non-ASCII), plus room for
# each item's keys, phone number and send_after. About 12 MiB with the defaults.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int(
    "MAX_REQUEST_BODY_BYTES",
    MESSAGE_BULK_MAX_ITEMS * (12 * MESSAGE_MAX_LENGTH + 512) + 65_536,
    minimum=1024,
)

# How long an Idempotency-Key is remembered (restapi.idempotency).
IDEMPOTENCY_KEY_TTL_HOURS = env_int("IDEMPOTENCY_KEY_TTL_HOURS", 24, minimum=1, maximum=24 * 30)

# --- Retention (read through retention.conf.retention_settings()) ---------------
# Days final messages are kept before the retention schedule deletes them (0: kept for
# good, the default); MESSAGE_RETENTION_DAYS_<STATUS> sets one final status apart.
_RETENTION_DAYS = env_int("MESSAGE_RETENTION_DAYS", 0, minimum=0, maximum=RETENTION_MAX_DAYS)
MESSAGE_RETENTION = {
    "DAYS_BY_STATUS": {
        status: env_int(
            f"MESSAGE_RETENTION_DAYS_{status.upper()}", _RETENTION_DAYS, minimum=0, maximum=RETENTION_MAX_DAYS
        )
        for status in RETENTION_STATUSES
    },
    "INBOUND_DAYS": env_int("MESSAGE_RETENTION_DAYS_INBOUND", _RETENTION_DAYS, minimum=0, maximum=RETENTION_MAX_DAYS),
    "BATCH_SIZE": env_int("MESSAGE_RETENTION_BATCH_SIZE", 1000, minimum=1, maximum=10_000),
    "RUN_SECONDS": env_int(
        "MESSAGE_RETENTION_RUN_SECONDS", RETENTION_MAX_RUN_SECONDS, minimum=1, maximum=RETENTION_MAX_RUN_SECONDS
    ),
}

# --- Templates ---------------------------------------------------------------------
# Where a message that names a template gets its text: the message_templates app (a dotted
# path, as MESSAGE_RECIPIENT_POLICY: messages_app is below it).
MESSAGE_TEMPLATE_SOURCE = "message_templates.for_messages.template_for_message"

# --- Consent (read through consent.conf.consent_settings()) ---------------------
# Whom messages_app refuses to queue a message for: the consent app's opted-out numbers
# (a dotted path: messages_app is below the consent app and cannot import it).
MESSAGE_RECIPIENT_POLICY = "consent.selectors.recipients_refused"
# Keyword lists, courtesy words and replies in other languages are set here in
# CONSENT (defaults in consent/conf.py); the default language's replies from the
# environment too.
# When a marketing message may go: the consent app's quiet hours (a dotted path, as above).
MESSAGE_QUIET_HOURS = "consent.policy.marketing_opening"
# A message's category when its creator gives none: transactional (codes, alerts: never
# held) or marketing (held outside quiet hours).
MESSAGE_DEFAULT_CATEGORY = env_choice(
    "MESSAGE_DEFAULT_CATEGORY", "transactional", choices=("transactional", "marketing")
)
CONSENT = {
    # Marketing messages go only inside this window of the recipient's local time;
    # overrides by E.164 prefix ("+1205=08:00-20:00,..."); a number whose zone is
    # unknown is judged in this zone (or "none": not held).
    "QUIET_HOURS_WINDOW": env_str("QUIET_HOURS_WINDOW", "08:00-21:00"),
    "QUIET_HOURS_OVERRIDES": env_str("QUIET_HOURS_OVERRIDES", ""),
    "QUIET_HOURS_UNKNOWN_ZONE": env_str("QUIET_HOURS_UNKNOWN_ZONE", "UTC"),
    "DEFAULT_LANGUAGE": env_str("CONSENT_DEFAULT_LANGUAGE", "en"),
    "REPLIES": {
        env_str("CONSENT_DEFAULT_LANGUAGE", "en"): {
            "opt_out": env_str("CONSENT_OPT_OUT_REPLY", ""),
            "opt_in": env_str("CONSENT_OPT_IN_REPLY", ""),
            "help": env_str("CONSENT_HELP_REPLY", ""),
        }
    },
}

# --- Dispatcher (read through dispatcher.conf.dispatcher_settings()) -----------
# Phone numbers, message text and WEBHOOK_AUTH_KEY go to the provider, so in
# production they travel over https unless WEBHOOK_ALLOW_HTTP says plain http is
# meant (the bundled fake provider, a provider reached over a private network).
_WEBHOOK_URL = env_url("WEBHOOK_URL", "http://127.0.0.1:8081/", schemes=("http", "https"))
_WEBHOOK_ALLOW_HTTP = env_bool("WEBHOOK_ALLOW_HTTP", False)
if not DEBUG and urlsplit(_WEBHOOK_URL).scheme == "http" and not _WEBHOOK_ALLOW_HTTP:
    _what = (
        "is a plain http URL"
        if env_str("WEBHOOK_URL")
        else "is not set, and its default (the local fake provider, http://127.0.0.1:8081/) is plain http"
    )
    raise ImproperlyConfigured(
        f"WEBHOOK_URL {_what}, which production (DEBUG off) refuses: set WEBHOOK_URL to the provider's "
        "https URL, or WEBHOOK_ALLOW_HTTP=true if plain http is intended"
    )
_DISPATCHER_READERS = {
    "int": lambda spec: env_int(spec.env, spec.default, minimum=spec.minimum, maximum=spec.maximum),
    "float": lambda spec: env_float(spec.env, spec.default, minimum=spec.minimum, maximum=spec.maximum),
    "str": lambda spec: env_str(spec.env, spec.default),
    "secret": lambda spec: env_secret(spec.env) or spec.default,
}
# Every dispatcher setting's variable, default and range is in dispatcher.conf.SPECS.
DISPATCHER = {spec.key: _DISPATCHER_READERS[spec.kind](spec) for spec in DISPATCHER_SETTING_SPECS}
DISPATCHER["WEBHOOK_URL"] = _WEBHOOK_URL
# Several providers, routing and failover (dispatcher/providers_conf.py); unset
# PROVIDERS keeps the one provider of the variables above.
DISPATCH_PROVIDERS, DISPATCH_PROVIDER_ROUTES = provider_specs_from_env(
    read=env_str,
    secret=env_secret,
    allow_http=DEBUG or _WEBHOOK_ALLOW_HTTP,
)

# --- django-q2 -----------------------------------------------------------------
# The dispatch schedule fires once a minute and each run paces ticks for
# DISPATCH_WINDOW_SECONDS; each tick hands its messages out as chunk tasks.
# timeout and retry outlive both (dispatcher.conf.task_timeouts), so the ORM
# broker never hands a task to a second worker while the first still runs it.
_TASK_TIMEOUT, _TASK_RETRY = task_timeouts(
    window_seconds=DISPATCHER["WINDOW_SECONDS"], webhook_timeout_seconds=DISPATCHER["WEBHOOK_TIMEOUT_SECONDS"]
)


Q_CLUSTER = {
    "name": "messaging",
    "orm": "default",
    # The ORM broker, dequeuing with SKIP LOCKED in one statement on the database's
    # clock (dispatcher/broker.py): qclusters take different tasks instead of racing.
    "broker_class": "dispatcher.broker.SkipLockedORM",
    # One worker process per core, as django-q2 defaults to, and at least two, since one
    # of the cluster's workers paces. Each sends from an event loop, so more workers
    # than cores only share the cores: on 2 cores, 4 qclusters of 4 workers sent 0.73
    # to 0.76 x what 4 of 2 did (bench/RESULTS.md, 2026-12-02).
    "workers": env_int("QCLUSTER_WORKERS", default_qcluster_workers(), minimum=1, maximum=64),
    # How many tasks a qcluster takes from the broker beyond those its workers
    # run. django-q2's default (workers squared) lets the first qcluster to poll
    # hoard the chunks of a tick while the others idle; one keeps the next chunk
    # ready and leaves the rest to whichever qcluster has a free worker.
    "queue_limit": env_int("QCLUSTER_QUEUE_LIMIT", 1, minimum=1, maximum=4096),
    "timeout": _TASK_TIMEOUT,
    "retry": _TASK_RETRY,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 200,
    "poll": 0.2,
    # A worker is replaced after this many tasks or once it has grown past this
    # resident size, so one large batch does not keep its memory for good.
    "recycle": env_int("QCLUSTER_RECYCLE", 500, minimum=1),
    "max_rss": env_int("QCLUSTER_MAX_RSS_KB", 262_144, minimum=32_768),
    "label": "Task queue",
    # Status callbacks run on a cluster (a queue) of their own: `Q_CLUSTER_NAME=callbacks
    # manage.py qcluster`. A dead or slow client endpoint holds only these workers, never
    # the ones that send.
    "ALT_CLUSTERS": {
        "callbacks": {"workers": env_int("CALLBACK_QCLUSTER_WORKERS", 2, minimum=2, maximum=64), "queue_limit": 2},
    },
}

# --- Status callbacks (read through callbacks.conf.callback_settings()) ------------
# Each endpoint's signing secret is derived from this key and the endpoint's salt (HMAC):
# the database holds no secret. Rotating the key changes every endpoint's secret.
_CALLBACK_SECRET_KEY = env_secret("CALLBACK_SECRET_KEY") or f"callbacks:{SECRET_KEY}"
CALLBACKS = {
    "timeout_seconds": env_float("CALLBACK_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60),
    "allow_http": DEBUG or env_bool("CALLBACK_ALLOW_HTTP", False),
    # Private, loopback or link-local addresses an endpoint may resolve to anyway (a
    # receiver on this host in development and tests); none by default.
    "allowed_networks": tuple(env_networks("CALLBACK_ALLOWED_NETWORKS")),
    "disable_after_seconds": env_int("CALLBACK_DISABLE_AFTER", 5 * 86_400, minimum=1),
    "batch_size": env_int("CALLBACK_BATCH_SIZE", 100, minimum=1, maximum=1000),
    "concurrency": env_int("CALLBACK_CONCURRENCY", 8, minimum=1, maximum=64),
    "lease_seconds": env_int("CALLBACK_LEASE_SECONDS", 120, minimum=1, maximum=3600),
    "poll_seconds": env_float("CALLBACK_POLL_SECONDS", 0.5, minimum=0.05, maximum=60),
    # Within django-q2's task timeout (which a short DISPATCH_WINDOW_SECONDS shortens).
    "pump_seconds": env_int(
        "CALLBACK_PUMP_SECONDS", min(50, _TASK_TIMEOUT - 10), minimum=1, maximum=_TASK_TIMEOUT - 10
    ),
    "endpoint_cache_seconds": env_float("CALLBACK_ENDPOINT_CACHE_SECONDS", 5.0, minimum=0, maximum=3600),
    "max_response_bytes": 64 * 1024,
    # The callbacks qcluster's niceness (0: as the senders; 19: the lowest priority).
    "qcluster_nice": env_int("CALLBACK_QCLUSTER_NICE", 10, minimum=0, maximum=19),
    # Seconds before each try of an event (Svix's schedule by default); after the last, it is given up.
    "retry_schedule": env_retry_schedule("CALLBACK_RETRY_SCHEDULE", CALLBACK_RETRY_SCHEDULE_SECONDS),
    "secret_key": _CALLBACK_SECRET_KEY,
}
# A message's callback_url is checked by the callbacks app (messages_app is below it).
MESSAGE_CALLBACK_URL_CHECK = "callbacks.for_messages.callback_url_check"

# Django's database sessions, but a cookie that cannot be a session key (a NUL in
# it) is no session rather than a database error.
SESSION_ENGINE = "restapi.sessions"

# --- REST framework ------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first so an unauthenticated request is answered 401 with a
        # WWW-Authenticate header rather than 403.
        "restapi.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's two, the browsable API's with a Log out that works under the CSP.
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "restapi.renderers.BrowsableAPIRenderer",
    ],
    # JSON with a nesting limit (a deep body is a 400, not a RecursionError's 500);
    # form bodies as REST framework takes them.
    "DEFAULT_PARSER_CLASSES": [
        "restapi.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "restapi.pagination.MessageCursorPagination",
    "PAGE_SIZE": 50,
    # Over the rate: 429 with Retry-After. Counted in the default cache (Redis),
    # so the limit holds across every web process.
    "DEFAULT_THROTTLE_CLASSES": [
        "restapi.throttles.UserRateThrottle",
        "restapi.throttles.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": env_rate("THROTTLE_USER_RATE", "1000/min"),
        "anon": env_rate("THROTTLE_ANON_RATE", "60/min"),
        # Callbacks refused as not signed by a provider, per client address (restapi.callbacks);
        # those whose signature checks are never counted.
        "callback_failure": env_rate("THROTTLE_CALLBACK_FAILURE_RATE", "60/min"),
    },
    # Anonymous clients are told apart by REMOTE_ADDR only; trusting
    # X-Forwarded-For would let any client dodge the limit by sending a new one.
    "NUM_PROXIES": 0,
    # An oversized body is a 413 in JSON, not Django's HTML 400.
    "EXCEPTION_HANDLER": "restapi.defaults.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Message sending service API",
    "DESCRIPTION": (
        "Queue SMS messages and let the dispatcher send them through the provider's "
        "webhook at a controlled rate: a batch of messages every interval, cluster-wide, "
        "never the same message twice from two workers, every attempt on record. "
        "Authenticate with `Authorization: Token <key>` (or the admin's session)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "/favicon.ico",
    "REDOC_DIST": "SIDECAR",
    # Redoc shows it at the top of its sidebar; served by this site (WHITENOISE_ROOT).
    "EXTENSIONS_INFO": {"x-logo": {"url": "/favicon.svg", "altText": "Message sending service"}},
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "MessageStatusEnum": "messages_app.models.Message.Status",
        "ConsentStatusEnum": "consent.models.Consent.Status",
        "CallbackEventTypeEnum": "callbacks.models.EventType",
        "CallbackEventStateEnum": "callbacks.models.CallbackEvent.State",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",  # drf-spectacular's default
        "restapi.schema.document_error_responses",
        "restapi.schema.require_a_field_in_patch_bodies",
    ],
}

# --- Seed-compatible routes (seed_api) ----------------------------------------------
# Off unless set: requests from these networks to the Go service's routes (/messages,
# /messages/worker/..., /status) without credentials act as SEED_API_SERVICE_USER,
# with that user's permissions, as the Go service's clients send none. Only for the
# hosts of those clients: anyone who can send from these addresses acts as that user.
# Browsers are never let in this way (a request with Origin or Sec-Fetch-Site must
# bring a token), so a page cannot make an operator's browser post here.
SEED_API_TRUSTED_NETWORKS = env_networks("SEED_API_TRUSTED_NETWORKS")
SEED_API_SERVICE_USER = env_str("SEED_API_SERVICE_USER")
if SEED_API_TRUSTED_NETWORKS and not SEED_API_SERVICE_USER:
    raise ImproperlyConfigured(
        "SEED_API_TRUSTED_NETWORKS is set: SEED_API_SERVICE_USER must name the user its requests act as"
    )

# --- Logging -------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
# plain (default) for a terminal; json for a log pipeline, one object per line.
LOG_FORMAT = env_choice("LOG_FORMAT", "plain", choices=LOG_FORMATS)
LOGGING = build_logging(log_format=LOG_FORMAT, level=LOG_LEVEL)

# Files served at the site's root, as browsers look for them: /favicon.ico, /favicon.svg.
WHITENOISE_ROOT = BASE_DIR / "messaging_site" / "site_root"
# Serve static files from the apps' folders in development, no collectstatic needed.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# --- Admin login lockout (django-axes) ---------------------------------------------
# Failed logins are counted per username *and* address, so someone guessing
# passwords elsewhere cannot lock a real operator out. AxesStandaloneBackend only
# refuses locked-out logins; ModelBackend still authenticates. The API's token and
# session authentication never call authenticate(), so axes does not touch them.
# A locked-out login is answered 429 until the cool-off ends or an operator runs
# `manage.py axes_reset_username <name>` (or `axes_reset` for everyone).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
_AXES_COOLOFF_MINUTES = env_int("AXES_COOLOFF_MINUTES", 15, minimum=1, maximum=7 * 24 * 60)
AXES_COOLOFF_TIME = timedelta(minutes=_AXES_COOLOFF_MINUTES)
AXES_COOLOFF_MESSAGE = (
    f"Account locked: too many failed login attempts. Try again in {_AXES_COOLOFF_MINUTES} minutes, "
    "or ask an operator to unlock it."
)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
