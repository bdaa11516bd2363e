"""Documents in the OpenAPI schema the error answers every operation can give.

drf-spectacular documents only what a view declares, usually its success. The
errors below come from machinery every view shares (authentication, permissions,
throttling, body parsing, pagination, a database that cannot serve), so they are
added here in one place rather than repeated on each view; what a view declares
itself is kept (given Retry-After, for a 429 or a 503).
"""

from __future__ import annotations

from django.conf import settings
from django.utils.functional import lazy
from rest_framework.settings import api_settings


class _SettingsByName:
    def __getitem__(self, name: str):
        return getattr(settings, name)


def _format_with_settings(template: str) -> str:
    return template.format_map(_SettingsByName())


# A description that names a configured number: "up to {MESSAGE_BULK_MAX_ITEMS} messages"
# reads "up to 1000 messages" in the schema, whatever the deployment set, filled in
# when the schema is generated (settings overridden in tests included).
text_with_settings = lazy(_format_with_settings, str)

SEED_TAG = "seed-compatible"
SEED_FAIL_REF = {"$ref": "#/components/schemas/SeedFail"}
ERROR_REF = {"$ref": "#/components/schemas/ErrorDetail"}
VALIDATION_REF = {"$ref": "#/components/schemas/ValidationErrors"}

ERROR_COMPONENTS = {
    "ErrorDetail": {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
        "description": "What went wrong, for a person to read.",
    },
    "ValidationErrors": {
        "type": "object",
        "additionalProperties": {},
        "description": (
            "Each field in error with a list of messages (`non_field_errors` for the body as a "
            "whole, item indexes for a list), or `detail` for a body that is not valid JSON."
        ),
    },
}

DESCRIPTIONS = {
    "400": "Invalid input.",
    "401": "No credentials, or invalid ones: send `Authorization: Token <key>`.",
    "403": "Authenticated, but not allowed to do this.",
    "404": "No such object, or an invalid cursor.",
    "413": "The request body is over the size limit of {limit} bytes.",
    "415": "The body is neither JSON nor form data.",
    "429": (
        "Too many requests: more than {user} per user ({anon} per address for the anonymous "
        "schema and docs); retry after Retry-After seconds."
    ),
    "503": "The database is busy or unavailable; retry after Retry-After seconds.",
}
# A provider's callback is throttled by its refusals, not by its rate (restapi.callbacks).
CALLBACK_429 = (
    "More than {callback_failure} of this address's callbacks were refused (not signed by a provider); "
    "retry after Retry-After seconds. Callbacks whose signature checks are never throttled."
)


def _description(code: str) -> str:
    rates = api_settings.DEFAULT_THROTTLE_RATES
    return DESCRIPTIONS[code].format(
        limit=settings.DATA_UPLOAD_MAX_MEMORY_SIZE, user=rates.get("user"), anon=rates.get("anon")
    )


def _callback_throttled_description() -> str:
    return CALLBACK_429.format(callback_failure=api_settings.DEFAULT_THROTTLE_RATES.get("callback_failure"))


# The 429 of a provider's callback route, which its view declares; the rate filled in
# when the schema is generated, as text_with_settings does.
callback_throttled_description = lazy(_callback_throttled_description, str)


RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before trying again."}}


def _error_codes(operation: dict, *, seed: bool) -> list[str]:
    parameters = operation.get("parameters", [])
    locations = {parameter["in"] for parameter in parameters}
    codes = ["429", "503"]
    if operation.get("security") and {} not in operation["security"]:
        codes += ["401", "403"]
    if "requestBody" in operation:
        codes += ["400", "413", "415"]
    elif "query" in locations:
        codes.append("400")
    # The Go service's routes have no object ids; an unknown worker action is their 400.
    if ("path" in locations and not seed) or any(parameter["name"] == "cursor" for parameter in parameters):
        codes.append("404")
    return codes


def _response(code: str, *, seed: bool) -> dict:
    body = SEED_FAIL_REF if seed else (VALIDATION_REF if code == "400" else ERROR_REF)
    response = {"description": _description(code), "content": {"application/json": {"schema": body}}}
    if code in ("429", "503"):
        response["headers"] = RETRY_AFTER
    return response


def document_error_responses(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(ERROR_COMPONENTS)
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            seed = SEED_TAG in operation.get("tags", [])
            responses = operation["responses"]
            for code in _error_codes(operation, seed=seed):
                responses.setdefault(code, _response(code, seed=seed))
                if code in ("429", "503"):
                    responses[code].setdefault("headers", RETRY_AFTER)
            operation["responses"] = dict(sorted(responses.items()))
    return result


def require_a_field_in_patch_bodies(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook: a PATCH body must change something.

    Every field of a PATCH body is optional, so the generated schema allows `{}`,
    which the API refuses (400: there is nothing to change). Saying so here
    (`minProperties: 1`) keeps schema and server in agreement.
    """
    schemas = result.get("components", {}).get("schemas", {})
    for path_item in result.get("paths", {}).values():
        body = path_item.get("patch", {}).get("requestBody", {})
        for media in body.get("content", {}).values():
            name = media.get("schema", {}).get("$ref", "").rpartition("/")[2]
            if name in schemas:
                schemas[name]["minProperties"] = 1
    return result
