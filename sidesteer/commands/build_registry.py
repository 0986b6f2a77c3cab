"""Build the bundled vector registry from the contrastive prompt sets in ``registry/prompts/*.json``.

Each prompt set is ``{"name", "description", "layer", "scale", "pairs": [{"positive", "negative"}, ...]}``; the
vector is ``mean(positive) - mean(negative)`` of the output residual stream at ``layer`` (each prompt averaged over
its tokens), unnormalised, so ``scale`` is the suggested add scale as is.

Usage (``sidesteer build-registry`` or, from a checkout, ``python scripts/build_registry.py``)::

    sidesteer build-registry --model default --out registry/smollm2
    sidesteer build-registry --model default --out /tmp/reg --layer 8 --only happy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine import GenerationConfig, HFSteerModel, mean_difference
from sidesteer.commands import project_root
from vectors import SteeringError, SteeringSpec, VectorRegistry

DEMO_PROMPT = [{"role": "user", "content": "Tell me about your day."}]


def load_prompt_set(path: Path) -> dict:
    """Read and check one prompt-set file."""
    data = json.loads(path.read_text())
    pairs = data.get("pairs") or []
    if not pairs or not all(isinstance(p, dict) and p.get("positive") and p.get("negative") for p in pairs):
        raise SteeringError(f"{path.name}: 'pairs' must be a non-empty list of {{'positive', 'negative'}} strings")
    return data


def main(argv: list[str] | None = None) -> int:
    """Build one registry entry per prompt set; returns the exit status."""
    root = project_root()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a folder or a hub id")
    parser.add_argument("--out", type=Path, default=root / "registry" / "smollm2", help="registry folder to write")
    parser.add_argument("--prompts", type=Path, default=root / "registry" / "prompts", help="folder of prompt sets")
    parser.add_argument("--layer", type=int, default=None, help="override every set's layer (0-based decoder layer)")
    parser.add_argument("--scale", type=float, default=None, help="override every set's suggested scale")
    parser.add_argument("--only", nargs="*", default=None, help="build only these set names")
    parser.add_argument("--demo-tokens", type=int, default=40, help="greedy tokens for the baseline/steered preview (0: none)")
    args = parser.parse_args(argv)

    model = HFSteerModel(args.model, dtype="float32")
    registry = VectorRegistry(args.out)
    files = sorted(args.prompts.glob("*.json"))
    if args.only:
        files = [f for f in files if f.stem in args.only]
    baseline = model.generate(DEMO_PROMPT, GenerationConfig(max_new_tokens=args.demo_tokens))[0].text if args.demo_tokens else ""
    if baseline:
        print(f"baseline: {baseline!r}")
    for path in files:
        data = load_prompt_set(path)
        name = data.get("name") or path.stem
        layer = args.layer if args.layer is not None else int(data["layer"])
        scale = args.scale if args.scale is not None else float(data["scale"])
        positive = [p["positive"] for p in data["pairs"]]
        negative = [p["negative"] for p in data["pairs"]]
        vector = mean_difference(model, positive, negative, layer, normalize=False)
        entry = registry.add(
            name,
            vector,
            description=data.get("description", ""),
            model_id=model.model_id,
            suggested_layer=layer,
            method="mean-diff",
            overwrite=True,
            extra={"suggested_scale": scale, "num_pairs": len(positive), "prompt_set": path.name},
        )
        print(f"{name}: layer {layer}, scale {scale}, norm {entry.norm:.2f} -> {entry.path}")
        if args.demo_tokens:
            spec = SteeringSpec.single(layer, vector, scale)
            steered = model.generate(DEMO_PROMPT, GenerationConfig(max_new_tokens=args.demo_tokens), steering=spec)[0].text
            print(f"  steered: {steered!r}")
    return 0
