"""django-q2 tasks. Thin: they take ids, or nothing, and call the engine."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import uuid

from dispatcher.conf import dispatcher_settings
from dispatcher.engine.pacing import ShutdownWatch, run_dispatch_window
from dispatcher.engine.pipeline import send_chunk as pipeline_send_chunk
from dispatcher.engine.providers import ProviderSet, provider_routes, provider_specs

# The providers of a worker process, kept from chunk to chunk so their pooled
# connections stay open; closed when django-q2 recycles the worker. Remade if the
# configuration changes (tests switch it).
_worker_providers: ProviderSet | None = None
_worker_providers_config: object = None

# Whether SIGTERM has reached this worker (see worker_handles_sigterm).
_terminated = False


def _on_sigterm(signum, frame) -> None:
    global _terminated
    if _terminated:  # asked twice: go now
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    _terminated = True


def worker_handles_sigterm(**kwargs) -> None:
    """django-q2's post_spawn, in each new worker process.

    Workers die at once on SIGTERM by default, so a SIGTERM to the qcluster's
    whole process group (what systemd and `docker stop` send) killed a chunk
    mid-send. Instead the first SIGTERM only tells the worker to stop: a chunk
    finishes its sends in flight and gives back the rest, a dispatch window
    ends, and the cluster then stops the worker in its own time. A second
    SIGTERM ends the worker at once.

    Not in django-q2's sync mode, where tasks run inside some other process
    (a test, a web worker) whose own SIGTERM handling is not ours to change.
    """
    if multiprocessing.current_process().name == "MainProcess":
        return
    signal.signal(signal.SIGTERM, _on_sigterm)


def _worker_session() -> ProviderSet:
    global _worker_providers, _worker_providers_config
    config = (provider_specs(), provider_routes())
    if _worker_providers is None or config != _worker_providers_config:
        if _worker_providers is not None:
            _worker_providers.close()
        else:
            atexit.register(lambda: _worker_providers and _worker_providers.close())
        _worker_providers, _worker_providers_config = ProviderSet.configured(), config
    return _worker_providers


def _stopping_check():
    watch = ShutdownWatch()
    return lambda: _terminated or watch()


def dispatch_window() -> str:
    ticks = run_dispatch_window(window_seconds=dispatcher_settings().window_seconds, should_stop=_stopping_check())
    return f"{ticks} ticks"


def send_chunk(message_ids: list[int], claim_token: str) -> dict[str, int]:
    report = pipeline_send_chunk(
        message_ids=message_ids,
        claim_token=uuid.UUID(claim_token),
        provider=_worker_session(),
        should_stop=_stopping_check(),
    )
    return dict(report.counts())
