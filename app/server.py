"""Launch settings shared by ``app.py`` and the tests: safe unless told otherwise.

Every response carries :data:`SECURITY_HEADERS` (a small ASGI middleware on the FastAPI app Gradio builds, passed
through ``launch(app_kwargs=...)``). The frame policy still lets Hugging Face embed the app in a Space's iframe.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.middleware import Middleware

from app.limits import AppLimits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
HOST_ENV = "GRADIO_SERVER_NAME"  # Gradio's own variables; Spaces set them
PORT_ENV = "GRADIO_SERVER_PORT"
# A spec for a 70B model (8192 hidden x 80 layers x 3 ops, fp32) is ~8 MB; nothing legitimate is bigger.
MAX_UPLOAD_SIZE = AppLimits().max_file_size
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    # No X-Frame-Options: Spaces show the app in an iframe on huggingface.co; frame-ancestors allows exactly that.
    "Content-Security-Policy": "frame-ancestors 'self' https://huggingface.co https://*.hf.space",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class SecurityHeadersMiddleware:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response (streams pass through untouched)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or SECURITY_HEADERS).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in self.headers}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def default_host() -> str:
    """``$GRADIO_SERVER_NAME`` or 127.0.0.1 (local only; pass 0.0.0.0 to serve a network)."""
    return os.environ.get(HOST_ENV) or DEFAULT_HOST


def default_port() -> int:
    """``$GRADIO_SERVER_PORT`` or 7860."""
    return int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


def launch_kwargs(
    host: str | None = None, port: int | None = None, *, limits: AppLimits | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``.

    No share link; uploads capped at ``limits.max_upload_mb``; no ``allowed_paths`` (Gradio serves only its own cache,
    into which it copies exported files from the app's private temp folder); security headers on every response;
    ``show_error=False`` so only the app's own ``gr.Error`` messages reach users, never a raw exception; no server-side
    rendering (its Node front server would answer pages without the headers).

    Args:
        host: Interface to bind; :func:`default_host` when None.
        port: Port; :func:`default_port` when None.
        limits: The app's limits (for the upload size); the defaults when None.
        overrides: Any other ``launch`` argument (tests pass ``prevent_thread_lock=True``).
    """
    return {
        "server_name": host or default_host(),
        "server_port": port or default_port(),
        "share": False,
        "max_file_size": (limits or AppLimits()).max_file_size,
        "show_error": False,
        "ssr_mode": False,
        "app_kwargs": {"middleware": [Middleware(SecurityHeadersMiddleware)]},
        **overrides,
    }
