import re

from django.core.exceptions import ValidationError
from rest_framework import exceptions
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination


class MessageCursorPagination(CursorPagination):
    """Newest first by id: a unique, indexed key, so every page costs the same."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request) -> int:
        # DRF quietly clamps a page_size over the maximum and ignores one that is not
        # a number; a client asking for 10000 rows should learn it gets at most 500.
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = int(raw) if re.fullmatch(r"[0-9]{1,9}", raw) else 0
        if not 1 <= size <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )
        return size

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        # DRF checks a cursor's offset but not its position, which goes into the
        # WHERE clause as is: a hand-made cursor like "p=abc" would be a 500.
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None and not cursor.position.isascii():
            raise NotFound(self.invalid_cursor_message)  # int() would read Unicode digits
        if cursor is not None and cursor.position is not None:
            field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
            try:
                field.to_python(cursor.position)
            except ValidationError:
                raise NotFound(self.invalid_cursor_message) from None
        return cursor


class SentMessageCursorPagination(MessageCursorPagination):
    ordering = ("-sent_at", "-id")
