"""Provider backends, chosen by dotted path the way Django chooses EMAIL_BACKEND."""

from __future__ import annotations

from django.utils.module_loading import import_string

from dispatcher.conf import PROVIDER_ALIASES, dispatcher_settings
from dispatcher.engine.providers.base import BaseProvider, ProviderError, ProviderResult

__all__ = ["BaseProvider", "ProviderError", "ProviderResult", "get_provider"]


def get_provider(backend: str | None = None) -> BaseProvider:
    path = backend or dispatcher_settings().provider_backend
    provider_class = import_string(PROVIDER_ALIASES.get(path, path))
    return provider_class()
