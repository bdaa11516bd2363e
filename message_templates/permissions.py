"""Who may do what with templates: as for messages (messages_app.permissions), Django's
model permissions on Template: view_template to read and preview, add_template to create,
change_template to edit, restore and set a language's variant. Sending from a template is
queueing a message: add_message, as any."""

from __future__ import annotations

from messages_app.permissions import HasPermission

VIEW_TEMPLATE = "message_templates.view_template"
ADD_TEMPLATE = "message_templates.add_template"
CHANGE_TEMPLATE = "message_templates.change_template"


class CanViewTemplates(HasPermission):
    permission = VIEW_TEMPLATE


class CanChangeTemplates(HasPermission):
    permission = CHANGE_TEMPLATE
