"""gunicorn's settings for the web tier: the Dockerfile's command, so what
docker-compose's `web` runs (`gunicorn -c gunicorn.conf.py messaging_site.wsgi`).

Slow clients. gunicorn's default sync workers serve one connection at a time and
read a request's head with no deadline, so two connections that send a header
line and never finish it held every worker: the API, the admin and the health
checks stopped answering until gunicorn killed the workers, again and again.
gevent workers read every connection in a greenlet of their own, so a slow or
idle client holds a greenlet (a few KiB), never a worker; up to
WEB_WORKER_CONNECTIONS connections per worker, idle ones included.

Database connections. A request runs in its own greenlet and could never reuse a
persistent connection, so each web process keeps a pool of at most
DATABASE_POOL_MAX_SIZE connections instead (messaging_site/settings.py); a burst
of requests waits for a free connection rather than opening one each, for up to
DATABASE_POOL_TIMEOUT_SECONDS, and is then answered 503 with Retry-After
(restapi.defaults). psycopg cooperates with gevent by itself.

Access log. It writes each request line and Referer, whose queries carry personal
data (`?recipient_phone_number=`, the admin's search `?q=`): their values are written
as REDACTED, but those of a few harmless parameters (restapi/redaction.py).

Every value here can be changed from the environment (README, *Production*).
"""

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

from gunicorn.glogging import Logger

from messaging_site.env import env_int, env_str
from restapi.redaction import LOGGED_QUERY_PARAMETERS, query_redacted, request_line_redacted, url_redacted

_logged_url = partial(url_redacted, values_kept=LOGGED_QUERY_PARAMETERS)
_logged_query = partial(query_redacted, values_kept=LOGGED_QUERY_PARAMETERS)
# Each access log atom (%(name)s in access_log_format) that can hold a query, and how it is written.
_REDACTED_ATOMS = {
    "r": request_line_redacted,
    "q": _logged_query,
    "{query_string}e": _logged_query,
    "{raw_uri}e": _logged_url,
    "{request_uri}e": _logged_url,
    "f": _logged_url,  # the Referer
    "{referer}i": _logged_url,
    "{http_referer}e": _logged_url,
}


class AccessLogWithoutPersonalData(Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for name, redacted in _REDACTED_ATOMS.items():
            if isinstance(atoms.get(name), str):
                atoms[name] = redacted(atoms[name])
        return atoms


bind = ["0.0.0.0:8000"]
worker_class = "gevent"
workers = env_int("WEB_WORKERS", 3, minimum=1, maximum=64)
worker_connections = env_int("WEB_WORKER_CONNECTIONS", 1000, minimum=10, maximum=100_000)
# A worker that does not report back within this long (a request hogging its loop) is replaced.
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
logger_class = AccessLogWithoutPersonalData
# The request line and headers are capped (gunicorn's defaults, stated here): an
# over-long URL is refused by gunicorn with a 414 before Django sees it.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# gunicorn's control socket (`gunicornc`: show, add or kill workers, reload, shut down)
# defaults to one path per user, $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl:
# a second gunicorn on the host took it over (and the first to stop deleted it), so a
# command meant for one reached the other. Off, unless WEB_CONTROL_SOCKET gives this
# instance a path of its own.
_control_socket = env_str("WEB_CONTROL_SOCKET", "")
control_socket_disable = not _control_socket
if _control_socket:
    control_socket = _control_socket

# Read by messaging_site/settings.py in each worker (forked from this process).
os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "10")

# The settings are read once before any worker starts, so that a setting they refuse stops
# gunicorn with one line and status 2 (read first by each worker, it cost a traceback per
# worker and "Worker failed to boot"). In a process of their own: importing Django here,
# before the gevent workers patch the standard library, would hand every worker database
# connection state made for threads (their greenlets then shared one connection).
_settings_check = subprocess.run(
    [sys.executable, "-c", "from messaging_site.env import settings_check; settings_check()"],
    cwd=Path(__file__).resolve().parent,
    check=False,
)
if _settings_check.returncode:
    sys.exit(_settings_check.returncode)
