from __future__ import annotations

from rest_framework import serializers

from dispatcher.models import MAX_BATCH_SIZE, MAX_INTERVAL_SECONDS
from restapi.fields import AsciiIntegerField


class MessageCountsSerializer(serializers.Serializer):
    unsent = serializers.IntegerField()
    processing = serializers.IntegerField()
    sent = serializers.IntegerField()
    failed = serializers.IntegerField()


class DispatcherStatusSerializer(serializers.Serializer):
    running = serializers.BooleanField()
    batch_size = serializers.IntegerField()
    interval_seconds = serializers.IntegerField()
    last_tick_at = serializers.DateTimeField(allow_null=True)
    next_tick_at = serializers.DateTimeField(allow_null=True)
    pace_held = serializers.BooleanField(
        help_text="False while the cluster has not kept up: a due tick waits because a whole batch "
        "from before is still being sent."
    )
    behind_since = serializers.DateTimeField(allow_null=True, help_text="Since when the pace has not been held.")
    behind_seconds = serializers.FloatField(help_text="How long the pace has not been held, in seconds (0 if held).")
    counts = MessageCountsSerializer()
    delivery_cache_pending = serializers.IntegerField(
        help_text="Sent messages whose messages:<messageId> record is not in Redis yet (it was unreachable)."
    )


class DispatcherConfigSerializer(serializers.Serializer):
    batch_size = AsciiIntegerField(min_value=1, max_value=MAX_BATCH_SIZE, required=False)
    interval_seconds = AsciiIntegerField(min_value=1, max_value=MAX_INTERVAL_SECONDS, required=False)

    def validate(self, attrs: dict) -> dict:
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        if not attrs:
            raise serializers.ValidationError("Give batch_size, interval_seconds or both.")
        return attrs


class ProviderStatusSerializer(serializers.Serializer):
    name = serializers.CharField()
    backend = serializers.CharField(help_text="webhook, twilio, console, locmem or a dotted path")
    url = serializers.CharField(help_text="The endpoint (never the credentials).")
    rate_per_second = serializers.FloatField(help_text="The cluster-wide rate limit; 0: none.")
    circuit = serializers.ChoiceField(choices=["closed", "open", "half_open"])
    consecutive_failures = serializers.IntegerField()
    open_until = serializers.DateTimeField(allow_null=True)
    outage_seconds = serializers.FloatField(help_text="How long the current outage (open circuit) has lasted.")
    sent_last_hour = serializers.IntegerField()
    failed_last_hour = serializers.IntegerField()
    latency_ms_last_hour = serializers.FloatField(allow_null=True)
