"""Who may control the dispatcher: staff, or holders of dispatcher.control_dispatcher.

Reading its state needs only a login (DRF's default IsAuthenticated).
"""

from __future__ import annotations

from messages_app.permissions import StaffOrPermission

CONTROL_DISPATCHER = "dispatcher.control_dispatcher"


class CanControlDispatcher(StaffOrPermission):
    permission = CONTROL_DISPATCHER
