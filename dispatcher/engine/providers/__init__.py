"""Provider backends, chosen by dotted path the way Django chooses EMAIL_BACKEND, and
the set of configured providers with their routing (dispatcher/providers_conf.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils.module_loading import import_string

from dispatcher.engine.providers.base import BaseProvider, ProviderError, ProviderResult, default_provider_spec
from dispatcher.engine.providers.gate import ProviderGate
from dispatcher.providers_conf import BACKEND_ALIASES, ProviderSpec, RouteRule

if TYPE_CHECKING:
    from messages_app.models import Message

__all__ = [
    "BaseProvider",
    "ProviderError",
    "ProviderResult",
    "ProviderSet",
    "get_provider",
    "provider_session",
    "provider_specs",
]


def provider_specs() -> tuple[ProviderSpec, ...]:
    """The configured providers in routing order: PROVIDERS, or the single-provider settings."""
    return getattr(settings, "DISPATCH_PROVIDERS", None) or (default_provider_spec(),)


def provider_routes() -> tuple[RouteRule, ...]:
    return getattr(settings, "DISPATCH_PROVIDER_ROUTES", ()) or ()


def build_provider(spec: ProviderSpec) -> BaseProvider:
    provider_class = import_string(BACKEND_ALIASES.get(spec.backend, spec.backend))
    return provider_class(spec)


def get_provider(backend: str | None = None) -> BaseProvider:
    """The first configured provider (or, given `backend`, that backend with the default settings)."""
    spec = provider_specs()[0]
    if backend is not None:
        spec = default_provider_spec()
        spec = ProviderSpec(
            name=spec.name,
            backend=BACKEND_ALIASES.get(backend, backend),
            url=spec.url,
            timeout_seconds=spec.timeout_seconds,
            options=spec.options,
        )
    return build_provider(spec)


class ProviderSet:
    """The providers a worker sends through, in routing order, each behind its gate
    (circuit breaker and rate limit, shared by the cluster)."""

    def __init__(self, providers: list[BaseProvider], routes: tuple[RouteRule, ...] = ()) -> None:
        self.providers = {provider.name: provider for provider in providers}
        self.order = [provider.name for provider in providers]
        self.routes = routes
        self.gates = {p.name: ProviderGate(p.name, p.spec.rate_per_second if p.spec else 0.0) for p in providers}
        self._executor: ThreadPoolExecutor | None = None
        self._executor_size = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sends_async(self) -> bool:
        """Whether every provider of the set can send from an event loop."""
        return all(provider.sends_async for provider in self.providers.values())

    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The set's event loop for async sends, kept for its life so pooled connections stay open.
        It runs only while a chunk waits on its sends, in whichever thread sends the chunk."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop

    @classmethod
    def configured(cls) -> ProviderSet:
        return cls([build_provider(spec) for spec in provider_specs()], provider_routes())

    @classmethod
    def of(cls, provider: BaseProvider | ProviderSet) -> ProviderSet:
        """`provider` as a set of one (made once per provider, so its threads are reused)."""
        if isinstance(provider, ProviderSet):
            return provider
        if getattr(provider, "_as_set", None) is None:
            provider._as_set = cls([provider])
        return provider._as_set

    def route(self, message: Message) -> list[str]:
        """The providers to try for `message`, in order. A message whose earlier attempt
        may have been taken (its `provider` is set) goes to that provider only."""
        if message.provider:
            return [message.provider] if message.provider in self.providers else self.order[:1]
        first = [rule.provider for rule in self.routes if message.recipient_phone_number.startswith(rule.prefix)][:1]
        return first + [name for name in self.order if name not in first]

    def executor(self, concurrency: int) -> ThreadPoolExecutor:
        """Threads for concurrent sends, kept for the set's life so pooled connections stay open."""
        if self._executor is None or self._executor_size != concurrency:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="provider-send")
            self._executor_size = concurrency
        return self._executor

    async def _aclose_providers(self) -> None:
        await asyncio.gather(*(provider.aclose() for provider in self.providers.values()))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._loop is not None and not self._loop.is_closed():
            loop = self._loop
            loop.run_until_complete(self._aclose_providers())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        for provider in self.providers.values():
            provider.close()


@contextmanager
def provider_session(provider: BaseProvider | ProviderSet | None = None) -> Iterator[ProviderSet]:
    """The configured providers for the block, closed after it (threads and pooled
    connections); providers given by the caller are used as they are and left open."""
    if provider is not None:
        yield ProviderSet.of(provider)
        return
    owned = ProviderSet.configured()
    try:
        yield owned
    finally:
        owned.close()
