"""Recording control actions in the audit log (audit.models.ControlAction).

Only the services of the apps above call this, inside the transaction of the
change they make; views, the admin and commands pass who acts (`actor`) and
through what (`via`). The audit app is the bottom layer: it imports no other
app of ours, so both messages and the dispatcher can record.
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Any

from audit.models import ControlAction

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

Via = ControlAction.Via
Action = ControlAction.Action


def _command_label() -> str:
    # A shell has no Django user; the OS account is the best "who" there is.
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError, ImportError):  # no passwd entry or login name (some containers)
        os_user = ""
    return f"manage.py ({os_user})" if os_user else "manage.py"


def control_action_record(
    *,
    action: str,
    actor: AbstractBaseUser | None,
    via: str,
    detail: dict[str, Any],
    actor_label: str = "",
) -> ControlAction:
    """Write one audit row. `actor` is the Django user, None for a command run from the shell
    or for what no user did (a reply, a provider's report: `actor_label` says who, e.g. the number)."""
    if actor is not None and actor.is_authenticated:
        label = actor.get_username()
    elif actor_label:
        label = actor_label
    elif via == Via.COMMAND:
        label = _command_label()
    else:
        label = "unknown"
    return ControlAction.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_label=label,
        action=action,
        via=via,
        detail=detail,
    )
