"""The app's command line: options (each also an environment variable), start-up checks, engine, registry, launch.

``python app.py ...`` and ``sidesteer app ...`` both run :func:`main`; ``app.py`` keeps Spaces' module-level ``demo``
(:func:`get_demo`). ``--help`` lists every option with its environment variable, and every other variable the app
reads. Start-up checks everything that can fail cheaply (arguments, the port, the registry folder) before the model
loads, then logs what it serves: backend, model, dtype, device, registry folders and mode, and the URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app import AppLimits, build_demo, launch_kwargs  # the package turns gradio analytics off before importing gradio
from app.deploy import (
    CREATE_REGISTRY_ENV,
    DATA_DIR_ENV,
    READ_ONLY_ENV,
    REGISTRY_ENV,
    SHIPPED_REGISTRY,
    SPACES_ENV,
    check_registry_folder,
    open_registry,
    parse_bool,
    read_only_default,
    user_registry_dir,
)
from app.limits import OPTIONS
from app.server import HOST_ENV, PORT_ENV, default_host, default_port
from engine.auto_backend import BACKENDS, BackendChoice, apply_threads, choose_backend, detect_machine
from vectors import SteeringError

PORTS_TRIED = 20  # how far past a busy port the error message looks for a free one to suggest

# Every environment variable the app reads, besides the limits' SIDESTEER_MAX_* (listed from OPTIONS) and the
# options' own variables. tests/test_cli_startup.py greps the code and fails on a variable missing here.
ENVIRONMENT: dict[str, str] = {
    "SIDESTEER_BACKEND": "--backend",
    "SIDESTEER_MODEL": "--model",
    REGISTRY_ENV: "--registry",
    CREATE_REGISTRY_ENV: "--create-registry (1/0)",
    READ_ONLY_ENV: "--read-only-registry (1/0)",
    HOST_ENV: "--host",
    PORT_ENV: "--port",
    DATA_DIR_ENV: "default user registry: $SIDESTEER_DATA_DIR/registry",
    "XDG_DATA_HOME": "else $XDG_DATA_HOME/sidesteer/registry (else ~/.local/share/sidesteer/registry)",
    SPACES_ENV: "set by Hugging Face Spaces: read-only registry unless SIDESTEER_READ_ONLY=0",
    "SIDESTEER_CACHE": "where the default model is converted to on first use (default ~/.cache/sidesteer)",
    "GRADIO_TEMP_DIR": "Gradio's upload and download cache (default $TMPDIR/gradio)",
    "GRADIO_ANALYTICS_ENABLED": "always set to False by the app (no usage analytics)",
}

logger = logging.getLogger("sidesteer.app")
_demo: Any = None


def backend_choice(backend: str, model: str | None = None) -> BackendChoice:
    """The backend ``--backend`` asks for on this machine and ``model``, its threads and why (:mod:`engine.auto_backend`)."""
    if backend not in BACKENDS:
        raise SystemExit(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    try:
        return choose_backend(backend, detect_machine(), model)
    except ValueError as exc:
        raise SystemExit(f"sidesteer: {exc}") from exc


def resolve_backend(backend: str, model: str | None = None) -> str:
    """``auto`` -> ``vllm`` where a CUDA GPU and vLLM are present, ``llamacpp`` on CPU for a GGUF model where
    llama-cpp-python imports, else ``hf`` (transformers)."""
    return backend_choice(backend, model).backend


def environment_help() -> str:
    """The ``--help`` epilog: every environment variable the app reads and what it sets."""
    rows = dict(ENVIRONMENT)
    rows.update({option.env: option.flag for option in OPTIONS})
    width = max(map(len, rows))
    lines = [f"  {name:<{width}}  {what}" for name, what in rows.items()]
    return (
        "environment variables (a flag wins over its variable; Spaces have no command line):\n"
        + "\n".join(lines)
        + "\n\nHub ids also follow huggingface_hub's own variables (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE)."
    )


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Command line; every option also has an environment default (for Spaces, where there is no command line).

    A bad environment value ends the program with a message naming the variable. ``args.registry_source`` names
    where an explicit registry folder came from (``--registry`` or ``$SIDESTEER_REGISTRY``; None for the default).
    """
    env = os.environ if environ is None else environ
    try:
        limits = AppLimits.from_env(env)
        read_only = read_only_default(env)
        create = parse_bool(env[CREATE_REGISTRY_ENV], CREATE_REGISTRY_ENV) if env.get(CREATE_REGISTRY_ENV, "").strip() else False
    except SteeringError as exc:
        raise SystemExit(f"sidesteer: {exc}") from exc
    parser = argparse.ArgumentParser(
        description="sidesteer: side-by-side activation steering in the browser",
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=env.get("SIDESTEER_BACKEND", "auto"),
        help="vllm (GPU), hf (transformers), llamacpp (llama.cpp on a GGUF; adds only) or auto [env SIDESTEER_BACKEND]",
    )
    parser.add_argument(
        "--model",
        default=env.get("SIDESTEER_MODEL", "default"),
        help="'default' (offline SmolLM2-135M-Instruct), a folder or a hub id [env SIDESTEER_MODEL]",
    )
    parser.add_argument(
        "--registry",
        default=None,
        help=(
            f"an existing folder for vectors created on this server; the app also serves the shipped "
            f"{SHIPPED_REGISTRY.parent.name}/{SHIPPED_REGISTRY.name} (read-only) [env {REGISTRY_ENV}; default "
            f"${DATA_DIR_ENV}/registry, else $XDG_DATA_HOME/sidesteer/registry, else ~/.local/share/sidesteer/registry]"
        ),
    )
    parser.add_argument(
        "--create-registry",
        action=argparse.BooleanOptionalAction,
        default=create,
        help=f"create the --registry folder when it does not exist (without it, a missing folder is an error) [env {CREATE_REGISTRY_ENV}=1/0]",
    )
    parser.add_argument(
        "--read-only-registry",
        action=argparse.BooleanOptionalAction,
        default=read_only,
        help=f"public mode: nobody can create, change or delete server vectors; created vectors live in the browser session [env {READ_ONLY_ENV}=1/0; on by default on Spaces]",
    )
    parser.add_argument("--host", default=default_host(), help=f"interface to bind (default 127.0.0.1) [env {HOST_ENV}]")
    parser.add_argument("--port", type=int, default=default_port(), help=f"port (default 7860) [env {PORT_ENV}]")
    for option in OPTIONS:
        default = getattr(limits, option.field)
        parser.add_argument(
            option.flag,
            type=int,
            default=default,
            metavar="N",
            help=f"limit: {option.help} (default {getattr(AppLimits, option.field)}) [env {option.env}]",
        )
    args = parser.parse_args(argv)
    args.registry_source = "--registry" if args.registry else (REGISTRY_ENV if env.get(REGISTRY_ENV) else None)
    args.registry = str(user_registry_dir(env, args.registry))
    return args


def limits_from_args(args: argparse.Namespace) -> AppLimits:
    """The limits the options ask for."""
    try:
        return AppLimits(**{option.field: getattr(args, option.field) for option in OPTIONS})
    except SteeringError as exc:
        raise SystemExit(f"sidesteer: {exc}") from exc


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (SO_REUSEADDR, as uvicorn binds: a port in TIME_WAIT counts as free)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def check_port(host: str, port: int) -> None:
    """Fail before anything loads when ``host:port`` cannot be bound; the message names ``--port`` and a free port.

    The app never moves to another port by itself: a bookmark, a proxy or a client script would then reach another
    server (or nothing) without a word.

    Raises:
        SystemExit: The port is taken, or ``host`` does not resolve.
    """
    try:
        if _port_free(host, port):
            return
    except socket.gaierror as exc:
        raise SystemExit(f"sidesteer: --host: {host!r} does not resolve ({exc.strerror}); pass e.g. --host 127.0.0.1") from exc
    free = next((p for p in range(port + 1, min(port + 1 + PORTS_TRIED, 65536)) if _port_free(host, p)), None)
    hint = f" (e.g. --port {free})" if free else ""
    raise SystemExit(
        f"sidesteer: --port: port {port} on {host} is in use (is the app already running?); "
        f"pass --port with a free port{hint} or set {PORT_ENV}"
    )


def create_engine(backend: str, model: str) -> Any:
    """Load the model on the chosen backend."""
    choice = backend_choice(backend, model)
    if choice.backend == "vllm":
        from engine import VLLMSteeringConfig, VLLMSteerModel

        return VLLMSteerModel(VLLMSteeringConfig(model_name=model, capture=True))  # the Registry tab extracts vectors
    apply_threads(choice)  # on CPU: all cores but one, so a busy neighbour cannot stall torch's threads
    if choice.backend == "llamacpp":
        from engine.auto_backend import create_llamacpp_engine

        return create_llamacpp_engine(choice, model)
    from engine import HFSteerModel

    return HFSteerModel(model)


def describe_engine(engine: Any) -> str:
    """``backend hf, model X, dtype torch.float32, device cpu, 30 layers x 576``: what start-up logs about the engine."""
    info = engine.info()
    config = getattr(engine, "config", None)  # the vLLM backend's settings
    dtype = getattr(getattr(engine, "model", None), "dtype", None) or getattr(config, "dtype", None) or info.get("dtype", "?")
    device = getattr(engine, "device", None) or getattr(engine, "worker_info", {}).get("device", "?")
    if config is not None and getattr(config, "tensor_parallel_size", 1) > 1:
        device = f"{device} x {config.tensor_parallel_size} (tensor parallel)"
    return (
        f"backend {info['backend']}, model {info['model']}, dtype {dtype}, device {device}, "
        f"{info['num_layers']} layers x {info['hidden_size']}"
    )


def create_registry(args: argparse.Namespace) -> Any:
    """The user folder over the shipped vectors, read-only when asked; logs the mode and the folders.

    An explicit folder (``--registry`` / ``$SIDESTEER_REGISTRY``) must exist unless ``--create-registry``.
    """
    try:
        check_registry_folder(Path(args.registry), args.registry_source, create=args.create_registry)
    except SteeringError as exc:
        raise SystemExit(f"sidesteer: {exc}") from exc
    return open_registry(Path(args.registry), read_only=args.read_only_registry)


def create_demo(args: argparse.Namespace) -> Any:
    """Registry + engine + limits -> the Gradio app (the registry first: its checks cost nothing, the model does).

    The engine gets the limits too (a second line of defence).
    """
    limits = limits_from_args(args)
    registry = create_registry(args)
    choice = backend_choice(args.backend, args.model)
    why = f" ({choice.reason})" if args.backend == "auto" else ""  # an explicit --backend needs no reason
    logger.info("loading model %r on backend %s%s", args.model, choice.backend, why)
    engine = create_engine(args.backend, args.model)
    logger.info("engine: %s", describe_engine(engine))
    engine.limits = limits.request_limits()
    return build_demo(engine, registry, limits=limits)


def get_demo() -> Any:
    """The demo built from the environment (Spaces have no command line), built once, on first call."""
    global _demo
    if _demo is None:
        _demo = create_demo(parse_args([]))
    return _demo


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, check the port, build the demo and serve it until interrupted."""
    global _demo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_port(args.host, args.port)  # before the model loads: a busy port fails in a second, not after a minute
    _demo = create_demo(args)
    _demo.launch(**launch_kwargs(args.host, args.port, limits=limits_from_args(args), prevent_thread_lock=True))
    logger.info("serving on http://%s:%d/ (Ctrl+C stops)", args.host, args.port)
    _demo.block_thread()
