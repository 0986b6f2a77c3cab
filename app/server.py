"""Launch settings shared by ``app.py`` and the tests: safe unless told otherwise."""

from __future__ import annotations

import os
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
# A spec for a 70B model (8192 hidden x 80 layers x 3 ops, fp32) is ~8 MB; nothing legitimate is bigger.
MAX_UPLOAD_SIZE = "16mb"


def default_host() -> str:
    """``$GRADIO_SERVER_NAME`` or 127.0.0.1 (local only; pass 0.0.0.0 to serve a network)."""
    return os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST


def default_port() -> int:
    """``$GRADIO_SERVER_PORT`` or 7860."""
    return int(os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT)


def launch_kwargs(host: str | None = None, port: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch``.

    No share link; uploads capped at :data:`MAX_UPLOAD_SIZE`; no ``allowed_paths`` (Gradio serves only its own cache,
    into which it copies exported files from the app's private temp folder).

    Args:
        host: Interface to bind; :func:`default_host` when None.
        port: Port; :func:`default_port` when None.
        overrides: Any other ``launch`` argument (tests pass ``prevent_thread_lock=True``).
    """
    return {
        "server_name": host or default_host(),
        "server_port": port or default_port(),
        "share": False,
        "max_file_size": MAX_UPLOAD_SIZE,
        "show_error": True,
        **overrides,
    }
