from __future__ import annotations


class MessageStateError(Exception):
    """A message is not in the status an operation needs (e.g. requeue of a sent one)."""
