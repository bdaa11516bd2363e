from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers

from dispatcher.models import MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS
from messages_app.models import Message
from restapi.fields import AsciiIntegerField


class MessageCountsSerializer(serializers.Serializer):
    """How many messages are in each status (every status a message can have)."""

    # One field per Message.Status, so the API counts what the command, the admin and
    # the dashboard count (all from message_status_counts()), a new status included.
    def get_fields(self) -> dict[str, serializers.Field]:
        return {status.value: serializers.IntegerField() for status in Message.Status}


class DispatcherStatusSerializer(serializers.Serializer):
    running = serializers.BooleanField()
    batch_size = serializers.IntegerField()
    interval_seconds = serializers.IntegerField()
    last_tick_at = serializers.DateTimeField(allow_null=True)
    next_tick_at = serializers.DateTimeField(allow_null=True)
    pace_held = serializers.BooleanField(
        help_text="False while the cluster has not kept up: a due tick waits because a whole batch "
        "from before is still being sent, or no dispatch window has taken it (none is running)."
    )
    behind_since = serializers.DateTimeField(allow_null=True, help_text="Since when the pace has not been held.")
    behind_seconds = serializers.FloatField(help_text="How long the pace has not been held, in seconds (0 if held).")
    counts = MessageCountsSerializer()
    delivery_cache_pending = serializers.IntegerField(
        help_text="Sent messages whose messages:<messageId> record is not in Redis yet (it was unreachable)."
    )


# What GET /api/dispatcher/ shows that PATCH does not set, besides `running`: the
# server's readings at the time of the GET. They move with every tick and every
# message sent, so a value sent back is never compared with the current one: it is
# ignored, whatever it is.
STATUS_READINGS = frozenset(
    {"last_tick_at", "next_tick_at", "pace_held", "behind_since", "behind_seconds", "counts", "delivery_cache_pending"}
)
# What Django's forms add to a form-encoded body (the browsable API's).
_FORM_KEYS = frozenset({"csrfmiddlewaretoken"})


class DispatcherConfigSerializer(serializers.Serializer):
    """PATCH /api/dispatcher/: batch_size and/or interval_seconds.

    The whole body of GET /api/dispatcher/ may be sent back with them changed (a
    round trip): `running` is accepted if it is the current state and refused if
    not (start and stop have calls of their own), the readings are ignored. Any
    other key is refused as unknown. The view passes the current state as
    context["running"].
    """

    batch_size = AsciiIntegerField(min_value=1, max_value=MAX_BATCH_SIZE, required=False)
    interval_seconds = AsciiIntegerField(min_value=1, max_value=MAX_INTERVAL_SECONDS, required=False)

    def validate(self, attrs: dict) -> dict:
        data = self.initial_data if isinstance(self.initial_data, Mapping) else {}
        unknown = set(data) - set(self.fields) - STATUS_READINGS - {"running"} - _FORM_KEYS
        errors = {str(name): ["Unknown field."] for name in sorted(unknown, key=str)}
        if "running" in data and self._running_sent(data["running"]) is not self.context["running"]:
            state, other = ("running", "stop") if self.context["running"] else ("stopped", "start")
            errors["running"] = [
                f"Read-only here, and the dispatcher is {state}: send it back as it is, or leave it out. "
                f"To {other} the dispatcher, POST /api/dispatcher/{other}/."
            ]
        if errors:
            raise serializers.ValidationError(errors)
        if not attrs:
            raise serializers.ValidationError("Give batch_size, interval_seconds or both.")
        return attrs

    @staticmethod
    def _running_sent(value) -> bool | None:
        try:
            return serializers.BooleanField().to_internal_value(value)
        except serializers.ValidationError:
            return None


class ProviderStatusSerializer(serializers.Serializer):
    name = serializers.CharField()
    backend = serializers.CharField(help_text="webhook, twilio, console, locmem or a dotted path")
    url = serializers.CharField(
        help_text="The endpoint, without user info and with each query value shown as REDACTED: "
        "credentials are often put there."
    )
    rate_per_second = serializers.FloatField(help_text="The cluster-wide rate limit; 0: none.")
    circuit = serializers.ChoiceField(choices=["closed", "open", "half_open"])
    consecutive_failures = serializers.IntegerField()
    open_until = serializers.DateTimeField(allow_null=True)
    outage_seconds = serializers.FloatField(help_text="How long the current outage (open circuit) has lasted.")
    paused_until = serializers.DateTimeField(
        allow_null=True,
        help_text="After a 429, no worker asks the provider before this time (at most "
        "PROVIDER_MAX_PAUSE_SECONDS from the 429); null when it is not paused.",
    )
    pause_reason = serializers.CharField(
        help_text='Why it is paused, e.g. "429 Retry-After 120 s"; empty when it is not.'
    )
    sent_last_hour = serializers.IntegerField()
    failed_last_hour = serializers.IntegerField()
    latency_ms_last_hour = serializers.FloatField(allow_null=True)
