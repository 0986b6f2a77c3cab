"""Greedy-token parity of the vLLM backend with the transformers backend on one device (GPU or CPU).

The program is :mod:`sidesteer.commands.parity`, also installed as ``sidesteer parity``.

Usage:
    python scripts/parity_check.py --arch qwen3-tiny --tokenizer DIR
"""

from sidesteer.commands.parity import main

if __name__ == "__main__":
    raise SystemExit(main())
