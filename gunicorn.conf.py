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

Every value here can be changed from the environment (README, *Production*).
"""

import os

from messaging_site.env import env_int, env_str

bind = ["0.0.0.0:8000"]
worker_class = "gevent"
workers = env_int("WEB_WORKERS", 3, minimum=1, maximum=64)
worker_connections = env_int("WEB_WORKER_CONNECTIONS", 1000, minimum=10, maximum=100_000)
# A worker that does not report back within this long (a request hogging its loop) is replaced.
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
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
