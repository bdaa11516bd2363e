"""The consent app's settings, read once from `settings.CONSENT` (messaging_site/settings.py
fills it from the environment) through `consent_settings()`."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

from consent.keywords import HELP, OPT_IN, OPT_OUT, KeywordRules, keyword_rules
from consent.quiet_hours import QuietHoursRules, quiet_hours_rules

# Keywords by kind and language. The carriers' and the FCC's lists in English,
# and the common words of the languages our users' customers write in.
DEFAULT_KEYWORDS = {
    OPT_OUT: {
        "en": ["STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "END", "QUIT", "CANCEL", "REVOKE", "OPTOUT", "OPT-OUT"],
        "fr": ["ARRET", "DESABONNER"],
        "es": ["BAJA", "PARAR"],
        "de": ["ABMELDEN", "STOPP"],
    },
    OPT_IN: {"en": ["START", "UNSTOP", "YES"], "fr": ["DEMARRER"], "es": ["ALTA"]},
    HELP: {"en": ["HELP", "INFO"], "fr": ["AIDE"], "es": ["AYUDA"], "de": ["HILFE"]},
}
# What may follow a keyword and still leave it a keyword ("stop please", "STOP - thank you").
DEFAULT_COURTESY_WORDS = [
    "please", "pls", "plz", "thanks", "thank you", "thx", "ty", "now", "asap", "immediately", "right now",
    "all", "me", "it", "this", "these", "them", "texts", "texting", "messages", "msgs", "sending", "ok", "okay",
    "merci", "svp", "stp", "por favor", "gracias", "bitte", "danke",
]  # fmt: skip
DEFAULT_REPLIES = {
    "en": {
        OPT_OUT: "You are unsubscribed and will get no more messages from us. Reply START to resubscribe.",
        OPT_IN: "You are subscribed again. Reply STOP to unsubscribe, HELP for help.",
        HELP: "Reply STOP to unsubscribe, START to resubscribe.",
    },
    "fr": {
        OPT_OUT: "Vous êtes désabonné et ne recevrez plus de messages. Répondez DEMARRER pour vous réabonner.",
        OPT_IN: "Vous êtes de nouveau abonné. Répondez ARRET pour vous désabonner.",
        HELP: "Répondez ARRET pour vous désabonner, DEMARRER pour vous réabonner.",
    },
    "es": {
        OPT_OUT: "Se ha dado de baja y no recibirá más mensajes. Responda ALTA para volver a suscribirse.",
        OPT_IN: "Se ha suscrito de nuevo. Responda BAJA para darse de baja.",
        HELP: "Responda BAJA para darse de baja, ALTA para volver a suscribirse.",
    },
    "de": {
        OPT_OUT: "Sie sind abgemeldet und erhalten keine Nachrichten mehr.",
        HELP: "Antworten Sie STOPP, um sich abzumelden.",
    },
}
DEFAULT_LANGUAGE = "en"
MAX_TRAILING_WORDS = 4


@dataclass(frozen=True)
class ConsentSettings:
    rules: KeywordRules
    # replies[language][kind]; a language without a reply for a kind uses the default language's.
    replies: dict[str, dict[str, str]]
    default_language: str
    quiet_hours: QuietHoursRules
    # How long an opt-out stays among the recent ones the workers check just before each
    # send (consent/recent_opt_outs.py): longer than any chunk can go on sending after its
    # own check at the start, which django-q2's task timeout bounds.
    recent_opt_out_seconds: int

    def reply_for(self, *, kind: str, language: str) -> str:
        return self.replies.get(language, {}).get(kind) or self.replies[self.default_language][kind]


_last_read: tuple[dict, ConsentSettings] | None = None


def consent_settings() -> ConsentSettings:
    """The settings, parsed once per `settings.CONSENT` (a test that overrides it gets its own)."""
    global _last_read
    from django.conf import settings

    raw = getattr(settings, "CONSENT", {})
    last = _last_read
    if last is not None and last[0] is raw:
        return last[1]
    _last_read = (raw, _read(raw))
    return _last_read[1]


def _read(raw: dict) -> ConsentSettings:
    replies = {language: dict(texts) for language, texts in DEFAULT_REPLIES.items()}
    for language, texts in raw.get("REPLIES", {}).items():
        replies.setdefault(language, {}).update({kind: text for kind, text in texts.items() if text})
    default_language = raw.get("DEFAULT_LANGUAGE", DEFAULT_LANGUAGE)
    if any(kind not in replies.get(default_language, {}) for kind in (OPT_OUT, OPT_IN, HELP)):
        raise ValueError(f"CONSENT's default language {default_language!r} needs a reply for every keyword kind")
    return ConsentSettings(
        rules=keyword_rules(
            keywords=raw.get("KEYWORDS", DEFAULT_KEYWORDS),
            courtesy_words=raw.get("COURTESY_WORDS", DEFAULT_COURTESY_WORDS),
            max_trailing_words=raw.get("MAX_TRAILING_WORDS", MAX_TRAILING_WORDS),
        ),
        replies=replies,
        default_language=default_language,
        quiet_hours=_quiet_hours(raw),
        recent_opt_out_seconds=raw.get("RECENT_OPT_OUT_SECONDS") or 2 * _task_timeout_seconds(),
    )


def _task_timeout_seconds() -> int:
    from django.conf import settings

    return int(settings.Q_CLUSTER["timeout"])


def _quiet_hours(raw: dict) -> QuietHoursRules:
    try:
        return quiet_hours_rules(
            window=raw.get("QUIET_HOURS_WINDOW", "08:00-21:00"),
            overrides=raw.get("QUIET_HOURS_OVERRIDES", ""),
            unknown_zone=raw.get("QUIET_HOURS_UNKNOWN_ZONE", "UTC"),
        )
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
