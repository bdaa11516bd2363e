from rest_framework.pagination import CursorPagination


class MessageCursorPagination(CursorPagination):
    """Newest first by id: a unique, indexed key, so every page costs the same."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class SentMessageCursorPagination(MessageCursorPagination):
    ordering = ("-sent_at", "-id")
