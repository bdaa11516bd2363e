"""The fake provider's log: a line per request answered, written in batches.

A line per request through `logging` (a record, a formatter, a write and a
flush each) cost more than answering the request did, and made the fake
provider the slowest part of a throughput benchmark. Here a request's line is
one f-string, and the lines go out together every FLUSH_SECONDS. The other
events (faults changed, receipts) are rare and come through `logging`: this is
also the handler they go to, and it writes the request lines waiting before
each of them first, so the log stays in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO

FLUSH_SECONDS = 0.2


class RequestLog(logging.Handler):
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s fakeprovider %(message)s"))
        self._stream = stream
        self._waiting: list[str] = []
        # The time prefix changes once a second; formatting it per line would cost more than the rest.
        self._second = -1
        self._second_text = ""

    def request(self, at: float, text: str) -> None:
        """Log `text` as of `at` (time.time()), with the next batch."""
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._waiting.append(f"{self._second_text},{int(at * 1000) % 1000:03d} fakeprovider {text}\n")

    def emit(self, record: logging.LogRecord) -> None:
        self._waiting.append(self.format(record) + "\n")
        self.flush()

    def flush(self) -> None:
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            self._stream.write("".join(waiting))
            self._stream.flush()

    async def keep_flushing(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()
