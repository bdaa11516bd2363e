"""Provider backends, chosen by dotted path the way Django chooses EMAIL_BACKEND."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.utils.module_loading import import_string

from dispatcher.conf import PROVIDER_ALIASES, dispatcher_settings
from dispatcher.engine.providers.base import BaseProvider, ProviderError, ProviderResult

__all__ = ["BaseProvider", "ProviderError", "ProviderResult", "get_provider", "provider_session"]


def get_provider(backend: str | None = None) -> BaseProvider:
    path = backend or dispatcher_settings().provider_backend
    provider_class = import_string(PROVIDER_ALIASES.get(path, path))
    return provider_class()


@contextmanager
def provider_session(provider: BaseProvider | None = None) -> Iterator[BaseProvider]:
    """The configured provider for the block, closed after it (its threads and pooled
    connections); a `provider` given by the caller is used as is and left open."""
    if provider is not None:
        yield provider
        return
    owned = get_provider()
    try:
        yield owned
    finally:
        owned.close()
