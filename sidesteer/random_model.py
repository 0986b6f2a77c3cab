"""Random-weight checkpoints of real architectures, built from a named config (parity checks and benchmarks).

Weights do not change the work a forward pass does, so a random Qwen3 of the right shape stands in for the real
model in throughput measurements (config only, loaded by vLLM with ``load_format="dummy"``), and one with saved
random weights gives two backends the same model to compare token for token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Architectures for random-weight models (fine for throughput: weights do not change the work done).
ARCHS: dict[str, dict[str, Any]] = {
    "qwen3-tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=768,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    # Host-bound control: so little compute per step that the drivers' and the engine core's host work dominate, as
    # it does for the 0.6B on a fast GPU. On a CPU it shows any host overhead of the steered engine.
    "qwen3-micro": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=512,
        vocab_size=2048,
        tie_word_embeddings=True,
    ),
    "qwen3-0.6b": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def build_random_model(
    arch: str, tokenizer_dir: str, out_root: str, dtype: str = "bfloat16", weights: bool = False, seed: int = 0
) -> str:
    """A Qwen3-architecture checkpoint folder built from a named config.

    Args:
        arch: Key of :data:`ARCHS`.
        tokenizer_dir: Folder whose tokenizer files are copied in (token ids above its vocabulary still work: output
            is never detokenized in benchmarks).
        out_root: Where the folder is created.
        dtype: ``torch_dtype`` recorded in the config.
        weights: Save random weights (needed when two backends must share them, e.g. parity). Without weights the
            caller loads with vLLM's ``load_format="dummy"``.
        seed: Weight init seed.

    Returns:
        The folder path.
    """
    import shutil
    import tempfile

    from transformers import Qwen3Config

    final = Path(out_root) / f"random-{arch}-{dtype}{'-w' if weights else ''}"
    if (final / "config.json").exists():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Written into a temporary folder and renamed: an interrupted build never leaves a folder that looks finished, and
    # two runs building the same model at once both end with one whole copy.
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    config = Qwen3Config(
        **ARCHS[arch], max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6, torch_dtype=dtype
    )
    config.architectures = ["Qwen3ForCausalLM"]  # without it vLLM may not pick the generative runner
    if weights:
        from transformers import Qwen3ForCausalLM

        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
        model.save_pretrained(out)
        del model
    else:
        config.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).exists():
            shutil.copy(Path(tokenizer_dir) / name, out / name)
    try:
        out.rename(final)
    except OSError:  # another run renamed its identical copy first (or a stale folder without config.json is there)
        shutil.rmtree(out, ignore_errors=True)
        if not (final / "config.json").exists():
            raise RuntimeError(
                f"{final}: a folder without config.json is in the way (an older, unfinished build?); remove it"
            ) from None
    return str(final)


def unit(hidden: int, seed: int) -> torch.Tensor:
    """A random unit vector of size ``hidden``, the same for the same ``seed``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(hidden, generator=g)
    return v / v.norm()
