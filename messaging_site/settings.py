"""Settings for the message sending service.

Everything that differs between deployments is read here, once, from the
environment (see .env.example). Apps read their own namespaced settings
through an accessor (dispatcher.conf) rather than os.environ.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from messaging_site.env import env_bool, env_choice, env_float, env_int, env_list, env_str, env_url
from messaging_site.logging_config import LOG_FORMATS, build_logging

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_STATE_DIR = Path(env_str("LOCAL_STATE_DIR", str(BASE_DIR / ".local")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set in the environment (`make run` writes a random one to .env)")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
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
    "django_q",
    "messages_app",
    "dispatcher",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "messaging_site.urls"
APPEND_SLASH = True

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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
            "KEY_FUNCTION": "dispatcher.delivery_cache.bare_key",
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
            "KEY_FUNCTION": "dispatcher.delivery_cache.bare_key",
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

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))

# --- Messages -----------------------------------------------------------------
MESSAGE_MAX_LENGTH = env_int("MESSAGE_MAX_LENGTH", 1000, minimum=1, maximum=100_000)
MESSAGE_BULK_MAX_ITEMS = env_int("MESSAGE_BULK_MAX_ITEMS", 1000, minimum=1, maximum=100_000)

# --- Dispatcher (read through dispatcher.conf.dispatcher_settings()) -----------
DISPATCHER = {
    "PROVIDER_BACKEND": env_str("DISPATCH_PROVIDER_BACKEND", "webhook"),
    "WEBHOOK_URL": env_url("WEBHOOK_URL", "http://127.0.0.1:8081/", schemes=("http", "https")),
    "WEBHOOK_AUTH_KEY": env_str("WEBHOOK_AUTH_KEY", ""),
    "WEBHOOK_TIMEOUT_SECONDS": env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1),
    "INITIAL_BATCH_SIZE": env_int("DISPATCH_BATCH_SIZE", 2, minimum=1, maximum=10_000),
    "INITIAL_INTERVAL_SECONDS": env_int("DISPATCH_INTERVAL_SECONDS", 120, minimum=1, maximum=86_400),
    "DELIVERY_CACHE_TTL_SECONDS": env_int("DELIVERY_CACHE_TTL_SECONDS", 0, minimum=0),
    "WINDOW_SECONDS": env_int("DISPATCH_WINDOW_SECONDS", 100, minimum=5, maximum=600),
    "MAX_ATTEMPTS": env_int("DISPATCH_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
    "RETRY_BASE_SECONDS": env_float("DISPATCH_RETRY_BASE_SECONDS", 5.0, minimum=0.0),
    "RETRY_MAX_SECONDS": env_float("DISPATCH_RETRY_MAX_SECONDS", 600.0, minimum=0.0),
    "LEASE_SECONDS": env_float("DISPATCH_LEASE_SECONDS", 60.0, minimum=0.5),
    "CONCURRENCY": env_int("DISPATCH_CONCURRENCY", 16, minimum=1, maximum=1024),
    # If set, GET /metrics requires `Authorization: Bearer <token>`; unset, it is open.
    "METRICS_TOKEN": env_str("METRICS_TOKEN", ""),
}

# --- django-q2 -----------------------------------------------------------------
# The dispatch schedule fires once a minute, and each run paces ticks for
# DISPATCH_WINDOW_SECONDS; timeout and retry must outlive such a run so the ORM
# broker never hands the same window to a second worker while it is still going.
Q_CLUSTER = {
    "name": "messaging",
    "orm": "default",
    "workers": env_int("QCLUSTER_WORKERS", 2, minimum=1, maximum=64),
    "timeout": DISPATCHER["WINDOW_SECONDS"] + 30,
    "retry": DISPATCHER["WINDOW_SECONDS"] + 60,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 200,
    "poll": 0.2,
    "label": "Task queue",
}

# --- REST framework ------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first so an unauthenticated request is answered 401 with a
        # WWW-Authenticate header rather than 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "messages_app.pagination.MessageCursorPagination",
    "PAGE_SIZE": 50,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Message sending service API",
    "DESCRIPTION": (
        "Queue SMS messages and let the dispatcher send them through the provider's "
        "webhook at a controlled rate. Authenticate with `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"MessageStatusEnum": "messages_app.models.Message.Status"},
}

# --- Logging -------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
# plain (default) for a terminal; json for a log pipeline, one object per line.
LOG_FORMAT = env_choice("LOG_FORMAT", "plain", choices=LOG_FORMATS)
LOGGING = build_logging(log_format=LOG_FORMAT, level=LOG_LEVEL)

# Serve static files from the apps' folders in development, no collectstatic needed.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
