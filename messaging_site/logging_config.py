"""The LOGGING dict, built from LOG_FORMAT and LOG_LEVEL (kept out of settings so tests can build either)."""

from __future__ import annotations

import logging

from pythonjsonlogger.core import RESERVED_ATTRS

from restapi.redaction import request_line_redacted

LOG_FORMATS = ("plain", "json")

_FORMATTERS = {
    # For people reading a terminal.
    "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
    # For a log pipeline: one JSON object per line. Fields passed as `extra`
    # (message_id, message_uuid, message_ids) become keys of their own, so a
    # message's whole story can be found by its id without parsing the text.
    "json": {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": ["levelname", "name", "process", "message"],
        "rename_fields": {"levelname": "level", "name": "logger"},
        "timestamp": True,  # ISO 8601 in UTC, under "timestamp"
        # Django's request records carry the request (or runserver's socket) and a
        # second, local-format time: noise in every line, and never an id to search by.
        "reserved_attrs": [*RESERVED_ATTRS, "request", "server_time"],
    },
}


class RequestLineRedacted(logging.Filter):
    """runserver's access log line ("django.server": the request line, the status, the size)
    with the query's personal data redacted, as gunicorn's (gunicorn.conf.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args and isinstance(record.args[0], str):
            record.args = (request_line_redacted(record.args[0]), *record.args[1:])
        return True


def build_logging(*, log_format: str, level: str) -> dict:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {log_format: _FORMATTERS[log_format]},
        "filters": {"request_line_redacted": {"()": RequestLineRedacted}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": log_format}},
        "root": {"handlers": ["console"], "level": "WARNING"},
        "loggers": {
            # Django's own loggers write through our handler only. Django's default
            # configuration, applied before this one, gives "django" a console
            # handler of its own (with DEBUG), and its records then reached ours
            # too: every line twice ("Watching for file changes" twice).
            "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
            # One line per request: the access log's (runserver's "django.server",
            # gunicorn's --access-logfile). django.request would repeat each 4xx as
            # a warning ("Not Found: /x"); it still logs 5xx, with the traceback.
            "django.request": {"level": "ERROR"},
            "django.server": {
                "handlers": ["console"],
                "level": "INFO",
                "propagate": False,
                "filters": ["request_line_redacted"],
            },
            "dispatcher": {"level": level},
            "messages_app": {"level": level},
            "restapi": {"level": level},  # the database's outage and its end (restapi.database_outage)
            "django-q": {"level": level},  # django-q2 logs under this name
        },
    }
