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
CREATE_REGISTRY_ENV = "SIDESTEER_CREATE_REGISTRY"
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


def check_registry_folder(folder: Path, source: str | None, *, create: bool = False) -> None:
    """An explicit registry folder must exist (a typo would otherwise show an empty registry); ``create`` makes it.

    The default folder (``source`` None) is created by the registry on its first write, so it may be missing.

    Args:
        folder: The user registry folder.
        source: Where the folder was given (``--registry`` or ``$SIDESTEER_REGISTRY``); None for the default.
        create: Create a missing folder (``--create-registry``) instead of failing.

    Raises:
        SteeringError: ``folder`` is a file, or was given explicitly, does not exist and ``create`` is False.
    """
    name = source or "registry"
    if folder.exists() and not folder.is_dir():
        raise SteeringError(f"{name}: {str(folder)!r} is a file, not a folder; pass the folder that holds the vectors")
    if folder.is_dir() or source is None:
        return
    if not create:
        raise SteeringError(
            f"{name}: folder {str(folder)!r} does not exist ({folder.resolve()}); check the path, or pass "
            f"--create-registry (or set {CREATE_REGISTRY_ENV}=1) to start an empty registry there"
        )
    folder.mkdir(parents=True)
    logger.info("registry: created the empty folder %s (--create-registry)", folder)


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
