"""Progress bars for the commands that do long work."""

from __future__ import annotations

from typing import Any

from django.core.management.base import OutputWrapper
from tqdm import tqdm


class _PlainStream:
    """A command's output stream as tqdm needs it.

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


def progress_bar(stream: OutputWrapper, *, desc: str, unit: str, total: int | None = None) -> tqdm:
    """A bar drawn on `stream` (a command's self.stderr), shown even when it is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=_PlainStream(stream))
