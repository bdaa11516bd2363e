"""Who may do what through the API, in one place (the admin's checks are on the ModelAdmins).

- Reading messages needs `messages_app.view_message`; queueing them
  `messages_app.add_message` (Django's model permissions; superusers have all).
- Requeueing needs `messages_app.requeue_message`, cancelling
  `messages_app.cancel_message`. Staff status grants nothing here, as in
  the admin, where every user is staff: one rule for every channel. (The
  dispatcher's own rules are in dispatcher.permissions.)
- Acting is not reading: a caller who may requeue or cancel but not view gets
  only a message's id and new status back, and finds only the messages the action
  applies to (any other id answers the same 404, existing or not; MessageViewSet).

Every class refuses anonymous requests, which DRF answers 401 (TokenAuthentication
comes first, so with a WWW-Authenticate header); an authenticated user without
the permission gets 403.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission, DjangoModelPermissions
from rest_framework.request import Request
from rest_framework.views import APIView

REQUEUE_MESSAGE = "messages_app.requeue_message"
VIEW_MESSAGE = "messages_app.view_message"

_VIEW = "%(app_label)s.view_%(model_name)s"


class ModelPermissionsWithView(DjangoModelPermissions):
    """DjangoModelPermissions that also require the view permission to read
    (DRF's own lets any authenticated user GET)."""

    perms_map = {**DjangoModelPermissions.perms_map, "GET": [_VIEW], "HEAD": [_VIEW], "OPTIONS": [_VIEW]}

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        # A method the view does not serve stays 405 for everyone, rather than a
        # 403 suggesting that some permission would make it work.
        if not hasattr(view, request.method.lower()):
            return True
        return super().has_permission(request, view)


class HasPermission(BasePermission):
    """Users holding `permission` (a subclass sets it); superusers hold every one.

    Staff status is not enough: it is what lets a user into the admin, and the
    admin asks for the same permission, so the API must not grant more.
    """

    permission: str = ""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(self.permission))


def may_view_messages(user) -> bool:
    return bool(user and user.is_authenticated and user.has_perm(VIEW_MESSAGE))


class CanRequeueMessages(HasPermission):
    permission = REQUEUE_MESSAGE


CANCEL_MESSAGE = "messages_app.cancel_message"


class CanCancelMessages(HasPermission):
    permission = CANCEL_MESSAGE
