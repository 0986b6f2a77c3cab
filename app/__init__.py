"""How a person drives sidesteer: the Gradio app (the only package that imports gradio).

``build_demo(engine, registry)`` builds the app; :func:`launch_kwargs` holds the safe launch settings (local bind,
no share link, upload size limit). ``app.py`` at the repository root wires them to the command line.
"""

from app.server import MAX_UPLOAD_SIZE, launch_kwargs
from app.ui import build_demo

__all__ = ["MAX_UPLOAD_SIZE", "build_demo", "launch_kwargs"]
