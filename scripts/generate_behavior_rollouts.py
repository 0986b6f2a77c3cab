"""Generate steered rollouts over prompt datasets: baseline + every (vector kind x scale), resumable.

The program is :mod:`sidesteer.commands.rollouts`, also installed as ``sidesteer rollouts``. See docs/ROLLOUTS.md.

Example::

    python scripts/generate_behavior_rollouts.py --datasets happy --use-vllm --rollouts 100 \\
        --trained-scales 0.5 1.0 2.0 --activation-scales -2.0 -1.0 1.0 2.0
"""

from sidesteer.commands.rollouts import main

if __name__ == "__main__":
    raise SystemExit(main())
