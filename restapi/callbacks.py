"""Views that providers call back (delivery receipts, replies), trusted by the signature a
callback carries rather than by a user.

Anyone can post to them, and refusing a forged callback is the only work a forger can
make us do, so it is made cheap: a callback without its signature headers is refused
401 before its body is read, and an address whose callbacks were refused
THROTTLE_CALLBACK_FAILURE_RATE times is answered 429 with Retry-After, before its
signature is checked or its body read, until its window has room again. Only refusals
count: a provider whose signatures check is never throttled, at any rate and however
many receipts a batch of its carries. (Forged receipts at 709 a second, all refused
401 and all read and checked, had raised /healthz's median latency to 298 ms.)
"""

from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from restapi.throttles import CallbackFailureThrottle

# What counts against an address: not signed by a provider (401), or posted to a
# provider this service does not have (404).
REFUSED = (status.HTTP_401_UNAUTHORIZED, status.HTTP_404_NOT_FOUND)


class SignatureRejected(APIException):
    # 401, not REST framework's 403 for a view without authentication classes (which it
    # gives NotAuthenticated there).
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "signature_rejected"


class SignatureMissing(SignatureRejected):
    default_code = "signature_missing"


class SignedCallbackView(APIView):
    """An APIView for a provider's callbacks (its POSTs): `signature_headers` (lower case)
    must all be present, and every refusal counts against the client's address
    (CallbackFailureThrottle). A view that also lists what it received (GET) keeps the
    API's own authentication, permissions and throttles for that (`callback_methods`)."""

    throttle_classes = [CallbackFailureThrottle]
    signature_headers: tuple[str, ...] = ()
    callback_methods: tuple[str, ...] = ("POST",)

    def _is_callback(self) -> bool:
        # No request while the schema is generated: each method's own rules apply there.
        request = getattr(self, "request", None)
        return request is not None and request.method in self.callback_methods

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)  # the throttle first: a refused address is not read
        missing = [name for name in self.signature_headers if not request.headers.get(name)]
        if missing and self._is_callback():
            raise SignatureMissing(f"signature check failed: missing {', '.join(missing)}")

    def finalize_response(self, request: Request, response: Response, *args, **kwargs) -> Response:
        if response.status_code in REFUSED and self._is_callback():
            for throttle in self.get_throttles():
                if isinstance(throttle, CallbackFailureThrottle):
                    throttle.record_failure(request, self)
        return super().finalize_response(request, response, *args, **kwargs)
