from __future__ import annotations


class MessageStateError(Exception):
    """A message is not in the status an operation needs (e.g. requeue of a sent one)."""


class MessageImportError(Exception):
    """A file of messages cannot be imported at all: unreadable, not UTF-8, malformed CSV or
    without a required column. (A bad row is not this: it is reported and skipped.)"""
