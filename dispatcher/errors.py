from __future__ import annotations


class DispatcherError(Exception):
    """Base for errors an operator can act on."""


class DispatcherConfigError(DispatcherError):
    """A batch size or interval outside its allowed range. `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class DispatcherStoppedError(DispatcherError):
    """A manual tick was asked for while the dispatcher is stopped."""
