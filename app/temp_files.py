"""Temporary files of the app, bounded: exports are pruned, uploads are deleted once read.

An export is written to a private folder and returned; Gradio then copies it into its own cache to serve it (that
copy is removed by ``gr.Blocks(delete_cache=...)``). So the private copy is useless soon after the handler returns:
:class:`ExportFolder` keeps only the newest few and nothing older than a few minutes. An uploaded spec file is read
once into the session (its tensors live in ``gr.State``), so :func:`discard_upload` deletes it right after.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

logger = logging.getLogger("sidesteer.app")

KEEP_EXPORTS = 32  # exports younger than MAX_EXPORT_AGE_S survive until this many newer ones exist
MAX_EXPORT_AGE_S = 600.0  # Gradio copies an export within milliseconds of the handler returning


def gradio_upload_dir() -> Path:
    """Gradio's upload cache: ``$GRADIO_TEMP_DIR`` or ``<system temp>/gradio`` (as ``gradio.utils.get_upload_folder``)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


class ExportFolder:
    """A private folder of exported files, one sub-folder per export, pruned on every new export.

    Args:
        root: The folder (created when missing).
        keep: How many of the newest exports to keep at most.
        max_age_s: Exports older than this are deleted whatever their number.
    """

    def __init__(self, root: str | Path, *, keep: int = KEEP_EXPORTS, max_age_s: float = MAX_EXPORT_AGE_S) -> None:
        self.root = Path(root)
        self.keep = keep
        self.max_age_s = max_age_s
        self._lock = threading.Lock()  # exports of concurrent sessions prune the same folder

    def new_path(self, filename: str) -> Path:
        """A fresh path for an export called ``filename`` (its own folder: concurrent exports never collide)."""
        with self._lock:
            self.prune()
            folder = self.root / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            folder.mkdir(parents=True)
        return folder / filename

    def exports(self) -> list[Path]:
        """The export folders, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir())

    def prune(self) -> None:
        """Delete the exports beyond the newest ``keep - 1`` (room for the next) and those older than ``max_age_s``."""
        folders = self.exports()
        now = time.time()
        stale = folders[: max(0, len(folders) - (self.keep - 1))]
        stale += [p for p in folders[len(stale) :] if now - p.stat().st_mtime > self.max_age_s]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)


def discard_upload(path: Path, upload_dir: Path) -> None:
    """Delete an uploaded file (and its now empty hash folder) once read; only ever inside ``upload_dir``.

    A path elsewhere (a test's file, a file an API caller named) is left alone.
    """
    try:
        resolved = path.resolve()
        root = upload_dir.resolve()
    except OSError:
        return
    if root not in resolved.parents:
        return
    try:
        resolved.unlink(missing_ok=True)
        if resolved.parent != root and not any(resolved.parent.iterdir()):
            resolved.parent.rmdir()
    except OSError as exc:  # another session's upload of the same bytes may share the folder
        logger.warning("could not delete upload %s: %s", resolved, exc)
