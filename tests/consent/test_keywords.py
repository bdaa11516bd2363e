"""Keywords as people write them: a table of real-world replies, each asserted."""

from __future__ import annotations

import pytest

from consent.conf import DEFAULT_COURTESY_WORDS, DEFAULT_KEYWORDS, MAX_TRAILING_WORDS, _read
from consent.keywords import HELP, OPT_IN, OPT_OUT, keyword_match, keyword_rules

RULES = keyword_rules(
    keywords=DEFAULT_KEYWORDS, courtesy_words=DEFAULT_COURTESY_WORDS, max_trailing_words=MAX_TRAILING_WORDS
)

REPLIES = [
    # (reply as received, the kind it is or None, the language of the reply)
    ("STOP", OPT_OUT, "en"),
    ("stop", OPT_OUT, "en"),
    ("Stop.", OPT_OUT, "en"),
    ("Stop!!!", OPT_OUT, "en"),
    ("  stop  ", OPT_OUT, "en"),
    ("STOP\n", OPT_OUT, "en"),
    ("stop please", OPT_OUT, "en"),
    ("Stop. Thank you", OPT_OUT, "en"),
    ("STOP \u2013 thank you", OPT_OUT, "en"),  # an en dash
    ("STOP \u2014 THANKS!", OPT_OUT, "en"),  # an em dash
    ("Stop texting me", OPT_OUT, "en"),
    ("stop sending me these messages", OPT_OUT, "en"),
    ("STOP ALL", OPT_OUT, "en"),
    ("stopall", OPT_OUT, "en"),
    ("Stop all.", OPT_OUT, "en"),
    ("\uff33\uff54\uff4f\uff50", OPT_OUT, "en"),  # "Stop" in full-width letters, as some phone keyboards send them
    ('"stop"', OPT_OUT, "en"),
    ("Unsubscribe", OPT_OUT, "en"),
    ("unsubscribe me please", OPT_OUT, "en"),
    ("END", OPT_OUT, "en"),
    ("Quit", OPT_OUT, "en"),
    ("cancel", OPT_OUT, "en"),
    ("Revoke", OPT_OUT, "en"),
    ("optout", OPT_OUT, "en"),
    ("Opt-out", OPT_OUT, "en"),
    ("opt out", OPT_OUT, "en"),
    ("OPT_OUT", OPT_OUT, "en"),
    ("Arrêt", OPT_OUT, "fr"),
    ("ARRET svp", OPT_OUT, "fr"),
    ("arrêt merci", OPT_OUT, "fr"),
    ("Baja", OPT_OUT, "es"),
    ("STOPP bitte", OPT_OUT, "de"),
    ("START", OPT_IN, "en"),
    ("start.", OPT_IN, "en"),
    ("Unstop", OPT_IN, "en"),
    ("yes", OPT_IN, "en"),
    ("Yes please!", OPT_IN, "en"),
    ("Démarrer", OPT_IN, "fr"),
    ("HELP", HELP, "en"),
    ("help?", HELP, "en"),
    ("Info", HELP, "en"),
    ("info please", HELP, "en"),
    ("aide", HELP, "fr"),
    ("AYUDA por favor", HELP, "es"),
    # Near misses: ordinary replies, kept as replies and changing nothing.
    ("stopped by the store", None, ""),
    ("Stop by the store later", None, ""),
    ("Don't stop", None, ""),
    ("please stop by tomorrow", None, ""),
    ("Cancel my appointment", None, ""),
    ("The end of the week works", None, ""),
    ("I quit smoking!", None, ""),
    ("Yes, see you at 10", None, ""),
    ("starting now", None, ""),
    ("stopwatch", None, ""),
    ("unstoppable", None, ""),
    ("Helpful, thanks", None, ""),
    ("information please", None, ""),
    ("Thanks!", None, ""),
    ("", None, ""),
    ("🙂", None, ""),
    ("stop please please please please please", None, ""),  # too many words after it to be only a keyword
]


@pytest.mark.parametrize(("reply", "kind", "language"), REPLIES, ids=[repr(reply) for reply, _, _ in REPLIES])
def test_reply_is_matched_as_a_person_means_it(reply, kind, language):
    match = keyword_match(reply, rules=RULES)
    if kind is None:
        assert match is None
    else:
        assert match is not None
        assert (match.kind, match.language) == (kind, language)


def test_the_table_is_large_enough():
    assert len(REPLIES) >= 40


def test_a_keyword_in_two_kinds_is_refused():
    with pytest.raises(ValueError, match="both"):
        keyword_rules(
            keywords={OPT_OUT: {"en": ["STOP"]}, OPT_IN: {"en": ["stop"]}}, courtesy_words=[], max_trailing_words=1
        )


def test_configured_lists_and_replies_replace_the_defaults():
    conf = _read(
        {
            "KEYWORDS": {OPT_OUT: {"en": ["HALT"]}, OPT_IN: {"en": ["GO"]}, HELP: {"en": ["SOS"]}},
            "REPLIES": {"en": {OPT_OUT: "Bye."}, "it": {HELP: "Rispondi HALT."}},
        }
    )
    assert keyword_match("halt!", rules=conf.rules).kind == OPT_OUT
    assert keyword_match("stop", rules=conf.rules) is None
    assert conf.reply_for(kind=OPT_OUT, language="en") == "Bye."
    assert conf.reply_for(kind=HELP, language="it") == "Rispondi HALT."
    # A language without its own reply for a kind answers in the default language.
    assert conf.reply_for(kind=OPT_IN, language="it") == conf.reply_for(kind=OPT_IN, language="en")
