"""Progress bars for the commands that do long work."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import OutputWrapper
from tqdm import tqdm

# Where the output is not a terminal (a pipe, a log, cron's mail), the bar's state is
# written as a line this often while the work goes on, and once when it ends.
LINE_EVERY_SECONDS = 30.0


class _PlainStream:
    """A command's output stream as tqdm needs it on a terminal.

    tqdm redraws its line with a carriage return and no newline; OutputWrapper.write
    would end every redraw with a newline, and colour stderr as an error on a terminal.
    """

    def __init__(self, wrapper: OutputWrapper) -> None:
        self._wrapper = wrapper

    def write(self, text: str) -> None:
        self._wrapper.write(text, style_func=str, ending="")

    def __getattr__(self, name: str) -> Any:
        # flush, isatty, encoding...: those of the stream underneath.
        return getattr(self._wrapper, name)


class _LineStream(_PlainStream):
    """A command's output stream that is not a terminal, as tqdm needs it there.

    No carriage return takes the cursor back there: every redraw (the empty bar, each
    update, the full one) would follow the one before on the same line. Instead the bar
    is written as a line of its own when it is done, and every LINE_EVERY_SECONDS before.
    """

    def __init__(self, wrapper: OutputWrapper) -> None:
        super().__init__(wrapper)
        self._drawn = ""
        self._line_at = time.monotonic()

    def write(self, text: str) -> None:
        drawn = text.rsplit("\r", 1)[-1].strip()
        if drawn:
            self._drawn = drawn
            if time.monotonic() - self._line_at >= LINE_EVERY_SECONDS:
                self._line()
        if "\n" in text and self._drawn:  # tqdm ends a bar it leaves on screen with a newline
            self._line()

    def _line(self) -> None:
        self._wrapper.write(self._drawn, style_func=str)
        self._drawn, self._line_at = "", time.monotonic()


def progress_bar(stream: OutputWrapper, *, desc: str, unit: str, total: int | None = None) -> tqdm:
    """A bar drawn on `stream` (a command's self.stderr): redrawn in place on a terminal,
    written as lines elsewhere (see _LineStream)."""
    file = _PlainStream(stream) if stream.isatty() else _LineStream(stream)
    return tqdm(total=total, desc=desc, unit=unit, file=file)
