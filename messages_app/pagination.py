from django.core.exceptions import ValidationError
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination


class MessageCursorPagination(CursorPagination):
    """Newest first by id: a unique, indexed key, so every page costs the same."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        # DRF checks a cursor's offset but not its position, which goes into the
        # WHERE clause as is: a hand-made cursor like "p=abc" would be a 500.
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
            try:
                field.to_python(cursor.position)
            except ValidationError:
                raise NotFound(self.invalid_cursor_message) from None
        return cursor


class SentMessageCursorPagination(MessageCursorPagination):
    ordering = ("-sent_at", "-id")
