from __future__ import annotations


class ConsentImportError(Exception):
    """The opt-out list cannot be read at all (not UTF-8, not CSV, no phone_number column)."""
