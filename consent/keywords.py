"""Which keyword, if any, a reply is: STOP, START, HELP as a person writes them.

Pure: no database, no settings of its own (the caller passes `KeywordRules`, built
once from settings by consent.conf). A reply is normalised (transliterated to
ASCII by anyascii, so "ARRÊT" is "ARRET"; casefolded; every run of punctuation or
whitespace one space) and matches a keyword when it starts with the keyword's
words and is followed by at most `max_trailing_words` words, each a courtesy
word ("please", "thank you", "now"...). So "Stop.", "stop please" and
"STOP - thank you" opt out, and "stopped by the store", "stop by later" or
"cancel my appointment" are ordinary replies: a real person's "cancel" followed by
anything else is about something else, and an opt-out read into it would be wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from anyascii import anyascii

OPT_OUT = "opt_out"
OPT_IN = "opt_in"
HELP = "help"
KINDS = (OPT_OUT, OPT_IN, HELP)

_NOT_A_WORD = re.compile(r"[^0-9a-z]+")


def keyword_words(text: str) -> tuple[str, ...]:
    """`text` as the words keywords are compared by: ASCII, casefolded, no punctuation."""
    return tuple(_NOT_A_WORD.sub(" ", anyascii(text).casefold()).split())


@dataclass(frozen=True)
class KeywordMatch:
    kind: str  # OPT_OUT, OPT_IN or HELP
    keyword: str  # as configured, e.g. "STOP ALL"
    language: str  # the language of the keyword's list, which picks the reply


@dataclass(frozen=True)
class KeywordRules:
    """Keywords by their words, longest first, and the words that may follow one."""

    keywords: tuple[tuple[tuple[str, ...], KeywordMatch], ...]
    courtesy_words: frozenset[str]
    max_trailing_words: int


def keyword_rules(
    *,
    keywords: Mapping[str, Mapping[str, Iterable[str]]],
    courtesy_words: Iterable[str],
    max_trailing_words: int,
) -> KeywordRules:
    """Rules from `keywords[kind][language] = [keyword, ...]`. A keyword in two kinds is
    a configuration error (which would "STOP" be?), raised as ValueError."""
    seen: dict[tuple[str, ...], KeywordMatch] = {}
    for kind, by_language in keywords.items():
        if kind not in KINDS:
            raise ValueError(f"unknown keyword kind {kind!r}; expected one of {', '.join(KINDS)}")
        for language, words in by_language.items():
            for keyword in words:
                key = keyword_words(keyword)
                if not key:
                    raise ValueError(f"the {kind} keyword {keyword!r} has no letters or digits")
                if key in seen and seen[key].kind != kind:
                    raise ValueError(f"{keyword!r} is both a {seen[key].kind} and a {kind} keyword")
                seen.setdefault(key, KeywordMatch(kind=kind, keyword=keyword, language=language))
    ordered = sorted(seen.items(), key=lambda item: -len(item[0]))
    courtesy = frozenset(word for phrase in courtesy_words for word in keyword_words(phrase))
    return KeywordRules(keywords=tuple(ordered), courtesy_words=courtesy, max_trailing_words=max_trailing_words)


def keyword_match(text: str, *, rules: KeywordRules) -> KeywordMatch | None:
    """The keyword `text` is, or None for an ordinary reply."""
    words = keyword_words(text)
    for key, match in rules.keywords:
        if words[: len(key)] != key:
            continue
        rest = words[len(key) :]
        if len(rest) <= rules.max_trailing_words and all(word in rules.courtesy_words for word in rest):
            return match
        # A longer keyword failed on its trailing words; a shorter one that is its
        # start ("STOP" for "STOP ALL") is judged on its own.
    return None
