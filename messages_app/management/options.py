"""Types for the commands' numeric options, checked as argparse reads them.

A value out of range is then a usage error naming the option (exit status 2), not
a traceback from deep in the work: timedelta's OverflowError for --older-than
99999999999, the database's "bigint out of range" for a huge --batch-size,
"port must be 0-65535" from the socket, or a drain whose --max-seconds nan never ends.
(call_command(name, option=value) skips argparse for options that are not required:
the services check what they must themselves.)
"""

from __future__ import annotations

import math
from argparse import ArgumentTypeError
from collections.abc import Callable

# What an error quotes of the value given, at most.
_QUOTED = 24


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _QUOTED else text[:_QUOTED] + "...")


def whole_number(*, minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        # ASCII digits only, as the API reads them (restapi/fields.py): int() takes "٣٠" for 30.
        try:
            if not text.isascii():
                raise ValueError
            value = int(text)
        except ValueError:
            raise ArgumentTypeError(f"{_quoted(text)} is not a whole number") from None
        if not minimum <= value <= maximum:
            raise ArgumentTypeError(f"must be a whole number from {minimum:,} to {maximum:,}, got {text[:_QUOTED]}")
        return value

    return parse


def number(*, minimum: float, maximum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            if not text.isascii():
                raise ValueError
            value = float(text)
        except ValueError:
            raise ArgumentTypeError(f"{_quoted(text)} is not a number") from None
        if not math.isfinite(value):
            raise ArgumentTypeError(f"{_quoted(text)} is not a finite number")
        if not minimum <= value <= maximum:
            raise ArgumentTypeError(f"must be a number from {minimum:,g} to {maximum:,g}, got {text[:_QUOTED]}")
        return value

    return parse
