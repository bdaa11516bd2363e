"""Who may control the dispatcher: holders of dispatcher.control_dispatcher (staff status alone is not enough).

Reading its state needs only a login (DRF's default IsAuthenticated).
"""

from __future__ import annotations

from messages_app.permissions import HasPermission

CONTROL_DISPATCHER = "dispatcher.control_dispatcher"


class CanControlDispatcher(HasPermission):
    permission = CONTROL_DISPATCHER
