"""Text made safe to show: strangers' text escaped for Markdown, and server paths removed from messages.

Spec files and control vectors are written by anyone; their description, model id and vector names must show as
plain text, never as a Markdown image (which the browser fetches), a link or HTML. Error messages may name server
folders (the registry's, Gradio's upload cache); users see the file name only.
"""

from __future__ import annotations

import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark, and an escaped one is always literal
# text; escaping them all also defeats autolinks (``http\://``), emphasis, tables and the ``$$`` of LaTeX.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# An absolute POSIX path (not inside a word or a URL: ``a/b``, ``http://x/y`` stay), a home path, a Windows path.
_PATH = re.compile(r"""(?<![\w.:/~\\-])(?:~|[A-Za-z]:)?[/\\](?:[^\s'"`/\\,;()\[\]<>|]+[/\\])*[^\s'"`/\\,;()\[\]<>|]+""")
SHOWN_CHARS = 300  # a description is a line of context, not a document


def escape_markdown(text: object, max_chars: int = SHOWN_CHARS) -> str:
    """``text`` as literal Markdown text on one line, shortened to ``max_chars`` (with an ellipsis).

    HTML tags, images, links, code spans, emphasis and LaTeX all come out as the characters typed.
    """
    flat = " ".join(str(text).split())
    if len(flat) > max_chars:
        flat = flat[: max_chars - 1] + "…"
    return _PUNCTUATION.sub(r"\\\1", flat)


def _last_part(match: re.Match[str]) -> str:
    parts = [p for p in re.split(r"[/\\]", match.group(0)) if p and p != "~" and not re.fullmatch(r"[A-Za-z]:", p)]
    return parts[-1] if parts else "…"


def redact_paths(message: str) -> str:
    """``message`` with every absolute path replaced by its last part (``/tmp/gradio/3f2a/x.gguf`` -> ``x.gguf``)."""
    return _PATH.sub(_last_part, message)
