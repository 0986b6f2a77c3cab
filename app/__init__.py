"""How a person drives sidesteer: the Gradio app (the only package that imports gradio).

``build_demo(engine, registry, limits=...)`` builds the app; :func:`launch_kwargs` holds the safe launch settings
(local bind, no share link, upload size limit, security headers); :mod:`app.deploy` decides read-only mode and the
registry folders; :mod:`app.limits` holds the per-request limits. ``app.py`` at the repository root wires them to the
command line and the environment.
"""

import os

# Before gradio is first imported: no usage analytics and no version check calls from a server (Blocks also gets
# analytics_enabled=False, which covers a gradio imported earlier by someone else).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from app.limits import AppLimits  # noqa: E402
from app.server import MAX_UPLOAD_SIZE, SECURITY_HEADERS, launch_kwargs  # noqa: E402
from app.ui import build_demo  # noqa: E402

__all__ = ["MAX_UPLOAD_SIZE", "SECURITY_HEADERS", "AppLimits", "build_demo", "launch_kwargs"]
