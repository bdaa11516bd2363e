"""The templates' admin: a template's page edits it (each save a new version), lists its
versions (each can be restored), previews the message live with sample data as you type
(message_templates/static/.../template_preview.js calling the preview view below: no inline
script, as the Content-Security-Policy wants), and sends it to a pasted or uploaded list."""

from __future__ import annotations

import io
import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from audit.models import ControlAction
from message_templates import selectors, services
from message_templates.models import Template, TemplateVersion
from message_templates.preview import template_preview
from messages_app.csv_import import MessageImportTemplate, messages_import_csv
from messages_app.errors import MessageImportError
from messages_app.models import Message

VIA = ControlAction.Via.ADMIN
# Rejected rows listed on the page after a send; the rest are counted.
SHOWN_REJECTIONS = 20


class TemplateAdminForm(forms.ModelForm):
    category = forms.ChoiceField(
        choices=[("", "None (the message's default)"), *Message.Category.choices], required=False
    )
    default_language = forms.CharField(max_length=16, initial="en", help_text="e.g. en, tr, pt-br.")
    body = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5, "cols": 80}),
        strip=False,
        help_text="The default language's text. ((name)) is replaced by the value of name; "
        "((name??text)) shows text when name is true (yes, true, 1).",
    )
    other_languages = forms.JSONField(
        required=False,
        initial=dict,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text='Other languages\' texts: {"tr": "Merhaba ((name))"}.',
    )
    sample = forms.JSONField(
        required=False,
        initial=dict,
        label="Sample personalisation",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text='For the preview below only, not saved: {"name": "Ada"}.',
    )

    class Meta:
        model = Template
        fields = ["name"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            current = selectors.template_version_get(template=self.instance)
            self.initial.update(
                category=current.category,
                default_language=current.default_language,
                body=current.bodies[current.default_language],
                other_languages={k: v for k, v in current.bodies.items() if k != current.default_language},
            )

    def clean(self) -> dict:
        data = super().clean()
        try:
            if "name" in self.fields and data.get("name"):
                data["name"] = services.template_name_checked(data["name"])
            language = services.language_normalised(data.get("default_language", ""), field="default_language")
            others = data.get("other_languages") or {}
            if not isinstance(others, dict):
                raise ValidationError({"other_languages": ['An object of texts by language: {"tr": "..."}.']})
            data["bodies"] = services.template_bodies_checked({**others, language: data.get("body", "")}, language)
            data["default_language"] = language
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                self.add_error(field if field in self.fields else "body", errors)
        return data


class TemplateVersionInline(admin.TabularInline):
    model = TemplateVersion
    extra = 0
    can_delete = False
    fields = ["number", "default_language", "category", "texts", "created_at", "created_by", "restored_from", "restore"]
    readonly_fields = fields
    ordering = ["-number"]

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="Texts")
    def texts(self, version: TemplateVersion) -> str:
        return "\n".join(f"{language}: {body}" for language, body in sorted(version.bodies.items()))

    @admin.display(description="")
    def restore(self, version: TemplateVersion) -> str:
        if version.number == version.template.current_version:
            return "current"
        url = reverse("admin:message_templates_template_restore", args=[version.template_id, version.number])
        return format_html('<a href="{}">Restore</a>', url)


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    form = TemplateAdminForm
    list_display = ["name", "current_version", "updated_at"]
    search_fields = ["name"]
    inlines = [TemplateVersionInline]
    change_form_template = "admin/message_templates/template/change_form.html"
    fieldsets = [(None, {"fields": ["name", "category", "default_language", "body", "other_languages", "sample"]})]

    class Media:
        js = ["message_templates/template_preview.js"]
        css = {"all": ["message_templates/template_preview.css"]}

    def get_readonly_fields(self, request: HttpRequest, obj: Template | None = None) -> list[str]:
        # The name is how clients refer to it: fixed once created.
        return ["name"] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Template | None = None) -> bool:
        # Messages keep the template's id and version: its history is not deleted.
        return False

    def get_urls(self):
        own = [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="message_templates_template_preview"),
            path(
                "<int:template_id>/send/",
                self.admin_site.admin_view(self.send_view),
                name="message_templates_template_send",
            ),
            path(
                "<int:template_id>/restore/<int:number>/",
                self.admin_site.admin_view(self.restore_view),
                name="message_templates_template_restore",
            ),
        ]
        return own + super().get_urls()

    def save_model(self, request: HttpRequest, obj: Template, form: forms.Form, change: bool) -> None:
        data = form.cleaned_data
        if not change:
            created = services.template_create(
                name=data["name"],
                bodies=data["bodies"],
                default_language=data["default_language"],
                category=data.get("category", ""),
                actor=request.user,
                via=VIA,
            )
            obj.pk, obj.current_version, obj.created_at = created.pk, created.current_version, created.created_at
            obj._state.adding = False
            return
        edited = {"category", "default_language", "body", "other_languages"} & set(form.changed_data)
        if not edited:
            self.message_user(request, "Nothing changed: no new version.", messages.INFO)
            return
        version = services.template_edit(
            template_id=obj.pk,
            bodies=data["bodies"],
            default_language=data["default_language"],
            category=data.get("category", ""),
            actor=request.user,
            via=VIA,
        )
        obj.current_version = version.number

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        extra_context = {**(extra_context or {}), "can_send": self._may_send(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _may_send(self, request: HttpRequest) -> bool:
        return request.user.has_perm("messages_app.add_message") and self.has_view_permission(request)

    def preview_view(self, request: HttpRequest) -> JsonResponse:
        """The live preview (POST from template_preview.js): the text the body makes with
        the sample values, its encoding, segments and UCS-2 characters; or the errors."""
        if request.method != "POST" or not self.has_view_permission(request):
            raise PermissionDenied
        try:
            sample = json.loads(request.POST.get("sample") or "{}")
        except ValueError:
            return JsonResponse({"errors": ["The sample personalisation is not JSON."]}, status=400)
        if not isinstance(sample, dict):
            return JsonResponse({"errors": ['The sample personalisation is an object: {"name": "Ada"}.']}, status=400)
        try:
            preview = template_preview(
                template_id=None,
                personalisation=sample,
                language=request.POST.get("language") or None,
                body=request.POST.get("body", ""),
            )
        except ValidationError as exc:
            errors = [message for messages_ in exc.message_dict.values() for message in messages_]
            return JsonResponse({"errors": errors}, status=400)
        cost = preview.cost
        return JsonResponse(
            {
                "text": cost.text,
                "length": cost.length,
                "encoding": cost.encoding,
                "segments": cost.segments,
                "ucs2_characters": [
                    {"character": c.character, "position": c.position, "code_point": c.code_point, "name": c.name}
                    for c in cost.ucs2_characters
                ],
            }
        )

    def restore_view(self, request: HttpRequest, template_id: int, number: int) -> HttpResponse:
        """Confirm (GET), then restore (POST): a new version copying version `number`."""
        template = get_object_or_404(Template, pk=template_id)
        if not self.has_change_permission(request, template):
            raise PermissionDenied
        version = get_object_or_404(TemplateVersion, template=template, number=number)
        if request.method == "POST":
            new = services.template_restore(template_id=template.pk, version=number, actor=request.user, via=VIA)
            self.message_user(
                request, f"Restored version {number} of {template.name} as version {new.number}.", messages.SUCCESS
            )
            return HttpResponseRedirect(reverse("admin:message_templates_template_change", args=[template.pk]))
        return TemplateResponse(
            request,
            "admin/message_templates/template/restore.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Restore {template.name} version {number}",
                "template_obj": template,
                "version": version,
                "opts": self.model._meta,
            },
        )

    def send_view(self, request: HttpRequest, template_id: int) -> HttpResponse:
        """Send the template to a list pasted or uploaded as CSV (recipient_phone_number and a
        column per placeholder), checked as the CSV import checks it; a dry run counts the cost."""
        template = get_object_or_404(Template, pk=template_id)
        if not self._may_send(request):
            raise PermissionDenied
        form = TemplateSendForm(request.POST or None, request.FILES or None)
        result = None
        rejections: list = []
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            raw = data["file"].read() if data.get("file") else data["recipients"].encode()
            try:
                result = messages_import_csv(
                    stream=io.BytesIO(raw),
                    template=MessageImportTemplate(
                        template=template.pk, version=data.get("version"), language=data.get("language") or None
                    ),
                    dry_run=data["dry_run"],
                    on_rejected=rejections.append,
                )
            except MessageImportError as exc:
                form.add_error(None, str(exc))
            else:
                verb = "Would queue" if data["dry_run"] else "Queued"
                self.message_user(
                    request,
                    f"{verb} {result.imported} messages ({result.segments} SMS segments); "
                    f"{result.rejected} rows rejected.",
                    messages.WARNING if result.rejected else messages.SUCCESS,
                )
        return TemplateResponse(
            request,
            "admin/message_templates/template/send.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Send {template.name}",
                "template_obj": template,
                "form": form,
                "result": result,
                "rejections": rejections[:SHOWN_REJECTIONS],
                "more_rejections": max(0, len(rejections) - SHOWN_REJECTIONS),
                "opts": self.model._meta,
                "placeholders": selectors.template_placeholders(template=template),
            },
        )


class TemplateSendForm(forms.Form):
    recipients = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 10, "cols": 80}),
        help_text="CSV with a header line: recipient_phone_number, a column per placeholder, optionally language.",
    )
    file = forms.FileField(required=False, help_text="Or a CSV file (UTF-8) of the same columns.")
    version = forms.IntegerField(required=False, min_value=1, help_text="Default: the current version.")
    language = forms.CharField(required=False, max_length=16, help_text="For rows without a language column.")
    dry_run = forms.BooleanField(required=False, initial=True, label="Dry run (count the cost, send nothing)")

    def clean(self) -> dict:
        data = super().clean()
        if not data.get("file") and not (data.get("recipients") or "").strip():
            raise ValidationError("Paste a list or choose a file.")
        return data
