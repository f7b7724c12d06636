"""What every response of the console carries: a strict Content-Security-Policy and the other
security headers, no caching, and the Secure flag on cookies when the request came over TLS.
Also the CSRF token that every state-changing request must send back."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No inline script anywhere: scripts come from /static only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The row page shows the mail's own HTML in a sandboxed srcdoc frame, which inherits this
# policy: its inline styles may apply, nothing else (its own policy below adds to this one).
ROW_PAGE_POLICY = CONTENT_SECURITY_POLICY.replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)
PREVIEW_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
HSTS = "max-age=31536000"  # only on responses that came over TLS
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (a page may set its own
    Content-Security-Policy, never a weaker default), and `Secure` on cookies over TLS."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str] = HEADERS) -> None:
        self.app = app
        self.headers = dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        over_tls = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name not in headers:
                        headers[name] = value
                if over_tls:
                    headers.setdefault("Strict-Transport-Security", HSTS)
                    cookies = headers.getlist("set-cookie")
                    del headers["set-cookie"]
                    for cookie in cookies:
                        secure = "; secure" not in cookie.lower()
                        headers.append("set-cookie", cookie + ("; secure" if secure else ""))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def check_csrf(request: Request, sent: object) -> None:
    """Refuse (403) a state-changing request whose token is missing or not this session's."""
    expected = request.session.get(CSRF_FIELD)
    if not isinstance(sent, str) or not sent:
        sent = request.headers.get(CSRF_HEADER, "")
    if (
        not isinstance(expected, str)
        or not expected
        or not secrets.compare_digest(sent.encode(), expected.encode())
    ):
        raise HTTPException(403, "the form has expired or did not come from this console")
