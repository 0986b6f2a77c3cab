"""What produced each pane, in one line under it, and a word-level diff of the two completions.

A shared screenshot of the Compare tab must explain itself: the steered pane names its vectors, layers, scales and
ops, the spec's short fingerprint and the sampling settings; the baseline pane says "unsteered" with the same
settings.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from app.sanitize import escape_markdown
from engine import GenerationConfig
from vectors import SteeringSpec

FINGERPRINT_CHARS = 12
BASELINE_ONLY = "baseline only"
STEERED_ONLY = "steered only"


def _g(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value))


def describe_rows(rows: Any) -> list[str]:
    """One phrase per non-empty spec editor row, e.g. ``L8: add happy ×3 · cap formal [-1, 1]``."""
    if isinstance(rows, dict):
        rows = rows.get("data") or []
    phrases = []
    for row in rows or []:
        cells = list(row) + [None] * 8
        if all(_blank(c) for c in cells[:8]):
            continue
        ops = []
        if not _blank(cells[1]):
            ops.append(f"add {cells[1]} ×{_g(1.0 if _blank(cells[2]) else cells[2])}")
        if not _blank(cells[3]):
            low = "-∞" if _blank(cells[4]) else _g(cells[4])
            high = "∞" if _blank(cells[5]) else _g(cells[5])
            ops.append(f"cap {cells[3]} [{low}, {high}]")
        if not _blank(cells[6]):
            ops.append(f"ablate {cells[6]} ×{_g(0.0 if _blank(cells[7]) else cells[7])}")
        phrases.append(f"L{_g(cells[0])}: " + " · ".join(ops))
    return phrases


def describe_sampling(config: GenerationConfig) -> str:
    """``greedy`` or ``T 0.8 · top-p 0.95``, then the seed and the token budget."""
    sampling = "greedy" if config.temperature == 0 else f"T {_g(config.temperature)} · top-p {_g(config.top_p)}"
    return f"{sampling} · seed {config.seed} · max {config.max_new_tokens} tokens"


def stamps(setup: str, spec: SteeringSpec, config: GenerationConfig) -> tuple[str, str]:
    """Markdown stamps of the baseline and the steered pane."""
    sampling = describe_sampling(config)
    skip = spec.skip_first_tokens
    if skip:  # the ops start at position `skip`: say so, it changes what a cap or ablation does
        setup = f"{setup} · first {skip} token{'s' if skip > 1 else ''} unsteered"
    steered = f"**steered** · {escape_markdown(setup)} · spec `{spec.fingerprint()[:FINGERPRINT_CHARS]}` · {sampling}"
    return f"**unsteered** · {sampling}", steered


def word_diff(baseline: str, steered: str) -> list[tuple[str, str | None]]:
    """Word-level diff for ``gr.HighlightedText``: shared words unlabelled, the rest labelled by the side they are on."""
    a, b = re.findall(r"\S+\s*", baseline or ""), re.findall(r"\S+\s*", steered or "")
    out: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(
        a=[w.strip() for w in a], b=[w.strip() for w in b], autojunk=False
    ).get_opcodes():
        if op == "equal":
            out.append(("".join(b[j1:j2]), None))
            continue
        if i2 > i1:
            out.append(("".join(a[i1:i2]), BASELINE_ONLY))
        if j2 > j1:
            out.append(("".join(b[j1:j2]), STEERED_ONLY))
    return out
