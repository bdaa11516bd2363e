"""Templates and their versions.

A Template is a name (its identity: messages and clients refer to it) and the number of
its current version. Everything that can be edited (the body in each language, which
language is the default, the category) is a TemplateVersion, written once and never
changed: an edit, a new language, a restore each add the next version (as GOV.UK Notify's
TemplateHistory), so a message's (template, version, language) always reads back the
text it was made from.

The bodies of a version are one JSON object {language: body} on the version rather than
a row per language: a version is read in one query, whole, and is immutable as a whole.
"""

from __future__ import annotations

from django.db import models

from messages_app.models import Message


class Template(models.Model):
    name = models.CharField(max_length=100, unique=True, help_text="How clients and the CSV import name it.")
    # The number of the version messages are made from when they ask for none.
    current_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TemplateVersion(models.Model):
    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField(help_text="1 for the first version.")
    # {language: body}; the default language is always among them.
    bodies = models.JSONField()
    default_language = models.CharField(max_length=16)
    # transactional or marketing (the messages' categories); blank: the message's own default.
    category = models.CharField(max_length=16, choices=Message.Category.choices, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True, default="")
    # The version this one copies, when it was made by a restore.
    restored_from = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["template_id", "-number"]
        # The safety net under the template row's lock (services): two edits can never
        # both become version N.
        constraints = [models.UniqueConstraint(fields=["template", "number"], name="template_version_once")]

    def __str__(self) -> str:
        return f"{self.template.name} v{self.number}"
