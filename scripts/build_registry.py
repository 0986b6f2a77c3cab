"""Build the bundled vector registry from the contrastive prompt sets in ``registry/prompts/*.json``.

The program is :mod:`sidesteer.commands.build_registry`, also installed as ``sidesteer build-registry``.

Usage::

    python scripts/build_registry.py --model default --out registry/smollm2
    python scripts/build_registry.py --model default --out /tmp/reg --layer 8 --only happy
"""

from sidesteer.commands.build_registry import main

if __name__ == "__main__":
    raise SystemExit(main())
