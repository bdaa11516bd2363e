"""What the fake provider is told to do wrong, and the checks that keep it coherent.

Faults are changed while it runs by whoever is testing (`POST /_fake/faults`), so
a change is applied all at once or not at all: a typo in one field must not leave
the others half-changed behind a 400. The receipt signing secret is deliberately
not a fault: faults are shown by `GET /_fake/faults`, the secret never is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit

TIMEOUT_STEP = "timeout"
MAX_RECEIPT_BATCH_SIZE = 1000  # the most the service takes in one callback
MAX_RECEIPT_RETRIES = 86_400  # a day of tries, a second apart


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0  # share of requests answered with error_status
    error_status: int = 500
    status_code: int = 202  # status of answers that are not errors
    missing_message_id: bool = False
    retry_after: float = 0.0  # if > 0, sent as Retry-After on 429 and 503 answers
    timeout_ms: float = 15_000.0  # how long a "timeout" script step keeps the client waiting
    script: list = field(default_factory=list)  # answers to play first: statuses or "timeout"
    receipts_url: str | None = None  # where delivery receipts are POSTed; None: no receipts
    receipt_delay_ms: float = 500.0  # from accepting a message to POSTing its receipt
    undelivered_rate: float = 0.0  # share of receipts that say "undelivered"
    bad_signature: bool = False  # sign receipts with a wrong key, to test the receiver's check
    receipt_batch_size: int = 1  # >1: receipts due together go in one callback, up to this many
    receipt_batch_wait_ms: float = 250.0  # a batch not yet full goes this long after its first receipt fell due
    # Tries after a callback's first, a second apart; a real provider keeps trying for hours, which
    # a chaos run that kills the web tier needs (python -m bench chaos).
    receipt_retries: int = 3

    def update(self, changes: Mapping[str, object]) -> None:
        """Apply all of `changes` or, if any is invalid, none of them (ValueError)."""
        known = [f.name for f in fields(self)]
        candidate = replace(self)
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(known)}")
            setattr(candidate, name, _checked(name, getattr(candidate, name), value))
        _check_ranges(candidate)
        for name in known:
            setattr(self, name, getattr(candidate, name))

    def take_script_step(self) -> int | str | None:
        """The next scripted answer (a status or "timeout"), consumed; None once the script is played."""
        return self.script.pop(0) if self.script else None


def _checked(name: str, current: object, value: object) -> object:
    """`value` as the type of fault `name`, or ValueError."""
    if name == "script":
        if not isinstance(value, list) or not all(
            step == TIMEOUT_STEP or (_is_number(step, int) and 100 <= step <= 599) for step in value
        ):
            raise ValueError('script must be a list of HTTP statuses (100-599) or "timeout"')
        return list(value)
    if name == "receipts_url":
        if value is None or value == "":
            return None
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("receipts_url must be an http:// or https:// URL, or null for no receipts")
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if not _is_number(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if not math.isfinite(value):  # JSON's NaN and Infinity, or the command's --latency-ms nan
        raise ValueError(f"{name} must be a finite number")
    return type(current)(value)


def _is_number(value: object, kinds: type | tuple[type, ...]) -> bool:
    # JSON's true and false arrive as bools, which Python also counts as ints.
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check_ranges(faults: Faults) -> None:
    for name in ("error_rate", "undelivered_rate"):
        if not 0.0 <= getattr(faults, name) <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    for name in ("latency_ms", "retry_after", "timeout_ms", "receipt_delay_ms", "receipt_batch_wait_ms"):
        if getattr(faults, name) < 0:
            raise ValueError(f"{name} must not be negative")
    if not 0 <= faults.receipt_retries <= MAX_RECEIPT_RETRIES:
        raise ValueError(f"receipt_retries must be between 0 and {MAX_RECEIPT_RETRIES}")
    if not 1 <= faults.receipt_batch_size <= MAX_RECEIPT_BATCH_SIZE:
        raise ValueError(f"receipt_batch_size must be between 1 and {MAX_RECEIPT_BATCH_SIZE}")
    for name in ("error_status", "status_code"):
        if not 100 <= getattr(faults, name) <= 599:
            raise ValueError(f"{name} must be an HTTP status (100-599)")
