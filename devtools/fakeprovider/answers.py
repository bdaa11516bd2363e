"""How the fake provider answers a message: a short chain of rules, one per fault.

Each rule looks at the request and the faults in force and either answers or
passes to the next; the last one always accepts. The order is the provider's:
a wrong key is refused before the body is read, a bad body before any fault is
played, and scripted steps before the random error rate. Keeping each fault in
its own small function is what lets a new fault be added without reading the
others. The rules decide only; waiting (latency, a scripted timeout) is left to
the server, which does it without blocking its event loop.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from devtools.fakeprovider.faults import TIMEOUT_STEP, Faults
from devtools.fakeprovider.state import FakeProviderState


@dataclass(slots=True)
class ProviderRequest:
    to: object  # as sent (a str when body_ok); None when the body is not a JSON object
    content: object
    body_ok: bool  # a JSON object with "to" and "content" strings
    auth_ok: bool | None  # did x-ins-auth-key match; None when no key is required
    idempotency_key: str | None

    @classmethod
    def parse(cls, body: object, *, auth_ok: bool | None, idempotency_key: str | None) -> ProviderRequest:
        """From the parsed JSON body (None if it was not JSON) and the headers that matter."""
        if isinstance(body, dict):
            to, content = body.get("to"), body.get("content")
        else:
            to = content = None
        body_ok = isinstance(to, str) and isinstance(content, str)
        return cls(to, content, body_ok, auth_ok, idempotency_key)


@dataclass(slots=True)
class Turn:
    """The faults as they apply to one request: drawn once, when it arrives."""

    faults: Faults
    step: int | str | None  # this request's scripted answer, if the script is not played out
    unlucky: bool  # drawn within error_rate (only when no step is scripted)


@dataclass(slots=True)
class Answer:
    status: int
    body: dict[str, str]
    headers: dict[str, str] | None = None
    message_id: str | None = None
    duplicate: bool = False
    hold_seconds: float = 0.0  # keep the client waiting this long first (a scripted timeout)


Rule = Callable[[ProviderRequest, Turn, FakeProviderState], Answer | None]


def auth_key_matches(sent: str | None, required: str | None) -> bool | None:
    if not required:
        return None
    # compare_digest: how long a wrong guess takes must not tell how much of it was right.
    return sent is not None and hmac.compare_digest(sent.encode(), required.encode())


def draw_turn(state: FakeProviderState) -> Turn:
    faults = state.faults
    step = None
    if faults.script:
        with state.lock:
            step = faults.take_script_step()
    unlucky = step is None and faults.error_rate > 0 and state.random.random() < faults.error_rate
    return Turn(faults, step, unlucky)


def refuse_a_wrong_auth_key(request: ProviderRequest, turn: Turn, state: FakeProviderState) -> Answer | None:
    if request.auth_ok is False:
        return Answer(401, {"message": "Unauthorized"})
    return None


def refuse_a_bad_body(request: ProviderRequest, turn: Turn, state: FakeProviderState) -> Answer | None:
    if not request.body_ok:
        return Answer(400, {"message": 'Bad request: expected JSON {"to": str, "content": str}'})
    return None


def hold_for_a_scripted_timeout(request: ProviderRequest, turn: Turn, state: FakeProviderState) -> Answer | None:
    if turn.step == TIMEOUT_STEP:
        # Keep the client waiting past its timeout; what we answer then is never read.
        return Answer(504, {"message": "Gateway Timeout"}, hold_seconds=turn.faults.timeout_ms / 1000)
    return None


def fail_as_told(request: ProviderRequest, turn: Turn, state: FakeProviderState) -> Answer | None:
    """An error from the error rate, or a scripted status that is not 2xx; Retry-After on 429 and 503."""
    if isinstance(turn.step, int) and not 200 <= turn.step < 300:
        status = turn.step
    elif turn.unlucky:
        status = turn.faults.error_status
    else:
        return None
    headers = None
    if status in (429, 503) and turn.faults.retry_after:
        # Delta-seconds, never an exponent (f"{999999999:g}" would be 1e+09).
        headers = {"Retry-After": f"{turn.faults.retry_after:f}".rstrip("0").rstrip(".")}
    return Answer(status, {"message": _phrase(status)}, headers)


def accept_without_a_message_id(request: ProviderRequest, turn: Turn, state: FakeProviderState) -> Answer | None:
    # A broken provider: 2xx but nothing to track the message by. Nothing is remembered for its key.
    if turn.faults.missing_message_id:
        return Answer(_accepted_status(turn), {"message": "Accepted"})
    return None


def accept(request: ProviderRequest, turn: Turn, state: FakeProviderState) -> Answer:
    """Accepted, with a new messageId; or, for a key accepted before, that first messageId again."""
    message_id, duplicate = state.accept(request.idempotency_key)
    return Answer(
        _accepted_status(turn),
        {"message": "Accepted", "messageId": message_id},
        message_id=message_id,
        duplicate=duplicate,
    )


ANSWER_RULES: tuple[Rule, ...] = (
    refuse_a_wrong_auth_key,
    refuse_a_bad_body,
    hold_for_a_scripted_timeout,
    fail_as_told,
    accept_without_a_message_id,
    accept,
)


def decide_answer(request: ProviderRequest, turn: Turn, state: FakeProviderState) -> Answer:
    for rule in ANSWER_RULES:
        answer = rule(request, turn, state)
        if answer is not None:
            return answer
    raise AssertionError("accept() always answers")


def _accepted_status(turn: Turn) -> int:
    return turn.step if isinstance(turn.step, int) else turn.faults.status_code


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a valid but unnamed status, such as 520
        return "Error"
