"""Where the app keeps its vectors and whether visitors may change them (public deploys are read-only).

The registry the app serves has two parts: the repository's shipped vectors (``registry/smollm2``, read-only, never
written) and a user folder for vectors created on this server. The user folder is ``--registry`` /
``$SIDESTEER_REGISTRY`` when given, else ``$SIDESTEER_DATA_DIR/registry``, else ``$XDG_DATA_HOME/sidesteer/registry``,
else ``~/.local/share/sidesteer/registry``: never a tracked folder of the repository.

Read-only mode (``--read-only-registry`` / ``$SIDESTEER_READ_ONLY``) is on by default on Hugging Face Spaces (they set
``$SPACE_ID``): anyone can reach a Space, so nobody may delete or overwrite its vectors; vectors made in the UI then
live in the visitor's browser session only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from vectors import SteeringError, VectorRegistry

logger = logging.getLogger("sidesteer.app")

READ_ONLY_ENV = "SIDESTEER_READ_ONLY"
REGISTRY_ENV = "SIDESTEER_REGISTRY"
DATA_DIR_ENV = "SIDESTEER_DATA_DIR"
SPACES_ENV = "SPACE_ID"  # set by Hugging Face Spaces in every Space's environment
SHIPPED_REGISTRY = Path(__file__).resolve().parents[1] / "registry" / "smollm2"
TRUE_WORDS = ("1", "true", "yes")
FALSE_WORDS = ("0", "false", "no")


def parse_bool(value: str, name: str) -> bool:
    """``1/true/yes`` -> True, ``0/false/no`` -> False (any case).

    Raises:
        SteeringError: Anything else; the message names the variable ``name``.
    """
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SteeringError(f"{name}: {value!r} is not a yes/no value; set it to one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")


def read_only_default(environ: Mapping[str, str]) -> bool:
    """Read-only mode unless told otherwise: ``$SIDESTEER_READ_ONLY`` when set (non-empty), else on exactly on Spaces.

    Raises:
        SteeringError: ``$SIDESTEER_READ_ONLY`` is not a yes/no value.
    """
    value = environ.get(READ_ONLY_ENV, "")
    if value.strip():
        return parse_bool(value, READ_ONLY_ENV)
    return bool(environ.get(SPACES_ENV))


def user_registry_dir(environ: Mapping[str, str], registry: str | None = None) -> Path:
    """The writable registry folder: ``registry`` (``--registry``), else ``$SIDESTEER_REGISTRY``, else a data folder."""
    if registry:
        return Path(registry).expanduser()
    if environ.get(REGISTRY_ENV):
        return Path(environ[REGISTRY_ENV]).expanduser()
    if environ.get(DATA_DIR_ENV):
        return Path(environ[DATA_DIR_ENV]).expanduser() / "registry"
    data_home = (
        Path(environ["XDG_DATA_HOME"]).expanduser()
        if environ.get("XDG_DATA_HOME")
        else Path(os.path.expanduser("~")) / ".local" / "share"
    )
    return data_home / "sidesteer" / "registry"


def open_registry(user_dir: Path, *, read_only: bool, shipped: Sequence[Path] = (SHIPPED_REGISTRY,)) -> VectorRegistry:
    """The app's registry: ``user_dir`` (written only when not ``read_only``) over the ``shipped`` folders.

    Logs the mode and the folders (server side only: users never see server paths).
    """
    shipped = [Path(p) for p in shipped if Path(p).resolve() != Path(user_dir).resolve()]
    registry = VectorRegistry(user_dir, read_only=read_only, shipped=shipped)
    logger.info(
        "registry: %s; user folder %s; shipped folders %s",
        "read-only (vectors created in the UI stay in the browser session)" if read_only else "writable",
        user_dir,
        ", ".join(str(p) for p in shipped) or "none",
    )
    return registry
