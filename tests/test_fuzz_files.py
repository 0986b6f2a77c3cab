"""Fuzzing the two file formats strangers upload: mutated spec files and GGUF control vectors.

Each mutation of a real exported file (fixed seed) must end in a valid spec or a ``SteeringError``; any other
exception, a parse that runs for a second or a peak of Python memory beyond ``max(20 x file size, 4 MiB)`` fails the
test. A mutated spec file that still loads must hold exactly the original content (its fingerprint is checked on
load). The counts are printed (``pytest -s``) and recorded as test properties.
"""

from __future__ import annotations

import json
import random
import struct
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable

import gguf
import torch

from tests.test_gguf_control import deadline
from tests.test_spec import join, split
from vectors import (
    AblationSpec,
    LayerSteeringSpec,
    ProjectionCapSpec,
    SpecMetadata,
    SteeringError,
    SteeringSpec,
    export_gguf_control_vector_bytes,
    import_gguf_control_vector_bytes,
)

spec_from_bytes = SteeringSpec.from_bytes

HIDDEN = 576
CASES_PER_FORMAT = 1200
SEED = 1234
MAX_SECONDS = 1.0
MIN_MEMORY_BUDGET = 4 * 1024 * 1024

WEIRD_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.5,
    -1e308,
    1e308,
    2**63,
    2**64 + 1,
    "",
    "x",
    "NaN",
    "1e38",
    [],
    [1, 2],
    {},
    {"a": 1},
    float("nan"),
    float("inf"),
    float("-inf"),
    3e38,
    -3e38,
    "layers.0.vector",
    "0" * 64,
    10**30,
]
WEIRD_DTYPES = ["F16", "BF16", "F64", "I32", "U8", "BOOL", "f32", "", None, 5, ["F32"]]
HUGE_COUNTS = [2**62, 2**63, 2**64 - 1, 2**32, 2**31 - 1, 1 << 40]


def _vec(g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=g) * scale


def realistic_specs() -> list[SteeringSpec]:
    g = torch.Generator().manual_seed(SEED)
    return [
        SteeringSpec(
            {3: LayerSteeringSpec(_vec(g), 4.0), 8: LayerSteeringSpec(_vec(g, 10.0), -2.0), 15: LayerSteeringSpec(_vec(g), 8.5)},
            SpecMetadata(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", description="three adds"),
        ),
        SteeringSpec(
            {
                10: LayerSteeringSpec(_vec(g), 6.0, ProjectionCapSpec(_vec(g), -2.0, 3.5), AblationSpec(_vec(g), 0.0)),
                12: LayerSteeringSpec(projection_cap=ProjectionCapSpec(_vec(g), min=-1.0)),
                20: LayerSteeringSpec(ablation=AblationSpec(_vec(g), 1.5)),
            },
            SpecMetadata(description="add, cap and ablation"),
        ),
        SteeringSpec(
            {
                i: LayerSteeringSpec(_vec(g), 1.0 + i, ProjectionCapSpec(_vec(g), max=float(i)), AblationSpec(_vec(g), 0.5))
                for i in range(0, 24, 4)
            }
        ),
    ]


def writer_gguf(tmp_path) -> bytes:
    """A control vector as gguf's GGUFWriter writes it, with extra metadata of every kind (strings, arrays)."""
    g = torch.Generator().manual_seed(SEED + 1)
    path = tmp_path / "writer.gguf"
    w = gguf.GGUFWriter(path, "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 2)
    w.add_array("test.ints", [1, 2, 3, 4])
    w.add_array("test.strings", ["alpha", "beta", "gamma"])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_float64("test.f64", 0.25)
    w.add_bool("test.bool", True)
    for n in (4, 9):
        w.add_tensor(f"direction.{n}", _vec(g).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


# -- generic byte mutations -------------------------------------------------------------------------------------------
def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    header_end = min(len(out), 8 + int.from_bytes(out[:8], "little")) if rng.random() < 0.7 else len(out)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(max(header_end, 1))] ^= 1 << rng.randrange(8)
    return bytes(out)


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[at:]


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 16) :]


def overwrite_run(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    run = bytes(rng.choice((0x00, 0xFF, rng.randrange(256))) for _ in range(rng.randint(1, 32)))
    return data[:at] + run + data[at + len(run) :]


GENERIC = [truncate, flip_bits, insert_bytes, delete_bytes, overwrite_run]


# -- spec-file header edits -------------------------------------------------------------------------------------------
def _paths(node, prefix=()):  # every (container, key) in a JSON tree
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield node, key
        yield from _paths(value, (*prefix, key))


def _raw_value(rng: random.Random) -> str:
    """JSON text that json.dumps cannot write: deep nesting, huge integers, duplicate keys."""
    kind = rng.randrange(4)
    if kind == 0:
        depth = rng.choice((65, 1000, 100_000))
        return "[" * depth + "]" * depth
    if kind == 1:
        return "9" * rng.choice((25, 400, 5000))
    if kind == 2:
        return '{"a": 1, "a": 2}'
    return "1e999"


def edit_json(tree: dict, rng: random.Random, raw: dict[str, str]) -> None:
    container, key = rng.choice(list(_paths(tree)))
    op = rng.randrange(7)
    if op == 0:
        container[key] = rng.choice(WEIRD_VALUES)
    elif op == 1 and isinstance(container, dict):
        del container[key]
    elif op == 2 and isinstance(container, dict):
        new = rng.choice([f"{key}x", str(key).upper(), f" {key}", f"+{key}", f"0{key}", "\u0668", f"{key}.0", "extra"])
        container[new] = container.pop(key)
    elif op == 3:
        container[key] = rng.choice([{"a": container[key]}, [container[key]], {"vector": container[key]}])
    elif op == 4:
        token = f"@RAW{len(raw)}@"
        raw[json.dumps(token)] = _raw_value(rng)
        container[key] = token
    elif op == 5 and isinstance(container, dict):
        token = f"@DUP{len(raw)}@"
        raw[json.dumps(token) + ": 0"] = f"{json.dumps(str(key))}: {json.dumps(container[key])}"
        container[token] = 0
    else:
        container[key] = rng.choice([10 ** rng.randint(7, 300), -(10 ** rng.randint(7, 300)), rng.uniform(-1e40, 1e40)])


def _dumps(tree, raw: dict[str, str]) -> str:
    text = json.dumps(tree)
    for token, value in raw.items():
        text = text.replace(token, value)
    return text


def edit_inner_header(data: bytes, rng: random.Random) -> bytes:
    outer, inner, tensor_data = split(data)
    raw: dict[str, str] = {}
    for _ in range(rng.randint(1, 3)):
        edit_json(inner, rng, raw)
    return join(outer, tensor_data, _dumps(inner, raw))


def edit_outer_header(data: bytes, rng: random.Random) -> bytes:
    outer, _, tensor_data = split(data)
    names = [k for k in outer if k != "__metadata__"]
    raw: dict[str, str] = {}
    name = rng.choice(names)
    entry = outer[name]
    op = rng.randrange(6)
    if op == 0:
        entry["dtype"] = rng.choice(WEIRD_DTYPES)
    elif op == 1:
        n = entry["shape"][0]
        entry["shape"] = rng.choice([[n + 1], [n - 1], [], [n, 1], [-1], [2**40], [0], [str(n)], n])
    elif op == 2:
        begin, end = entry["data_offsets"]
        delta = rng.choice([-8, -4, -1, 1, 4, 8, 2**32, 2**64])
        entry["data_offsets"] = rng.choice(
            [[begin + delta, end + delta], [begin, end + delta], [end, begin], [begin], [0, 2**64], [-4, end], [begin + 0.5, end]]
        )
    elif op == 3:
        other = rng.choice(names)
        entry["data_offsets"] = list(outer[other]["data_offsets"])
    elif op == 4:
        outer[rng.choice(["t", f"{name}x", "layers.99.vector"])] = outer.pop(name)
    else:
        edit_json(outer, rng, raw)
    return join(_dumps(outer, raw), tensor_data)


SPEC_MUTATORS = [*GENERIC, edit_inner_header, edit_inner_header, edit_inner_header, edit_outer_header, edit_outer_header]


# -- GGUF count and length edits ------------------------------------------------------------------------------------
def _gguf_targets(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of count, length, type and dimension fields, found by the byte patterns the writer used: the
    uint64 length before each known string, the 4 bytes just before the first zero byte after it (for a key: its value
    type; for a tensor name: its n_dims; a heuristic, so some hits land elsewhere), and each array's type and length."""
    targets = [(8, 8), (16, 8), (4, 4)]  # tensor_count, kv_count, version
    for text in (
        b"general.architecture",
        b"controlvector",
        b"controlvector.model_hint",
        b"controlvector.layer_count",
        b"llama",
        b"test.ints",
        b"test.strings",
        b"test.nested",
        b"alpha",
        b"beta",
        b"gamma",
        b"direction.",
    ):
        at = data.find(text)
        while at >= 8:
            targets.append((at - 8, 8))
            zero = data.find(b"\x00", at)
            targets.append((zero - 1 if zero > 0 else at, 4))
            at = data.find(text, at + 1)
    for item_type, count in ((5, 4), (8, 3), (9, 2), (5, 2), (5, 1)):
        at = data.find(struct.pack("<IQ", item_type, count))
        if at >= 0:
            targets += [(at, 4), (at + 4, 8)]  # array item type, array length
    return targets


def gguf_field_edit(data: bytes, rng: random.Random) -> bytes:
    offset, width = rng.choice(_gguf_targets(data))
    if width == 8:
        value = rng.choice([*HUGE_COUNTS, len(data), 2 * len(data), rng.getrandbits(64), 0, 1])
    else:
        value = rng.choice([rng.getrandbits(32), 9, 8, 13, 0xFFFFFFFF, 5, 2])
    return data[:offset] + value.to_bytes(width, "little") + data[offset + width :]


GGUF_MUTATORS = [*GENERIC, gguf_field_edit, gguf_field_edit, gguf_field_edit]


# -- the harness ----------------------------------------------------------------------------------------------------
def fuzz(
    seeds: list[bytes], mutators: list[Callable], parse: Callable[[bytes], SteeringSpec], check_valid: Callable, seed: int
) -> Counter:
    rng = random.Random(seed)
    counts: Counter = Counter()
    for data in seeds:  # warm-up: lazy imports and caches must not count as a case's memory
        parse(data)
    tracemalloc.start()
    try:
        for case in range(CASES_PER_FORMAT):
            source = rng.choice(seeds)
            mutator = rng.choice(mutators)
            data = mutator(source, rng)
            if data == source:
                data = truncate(source, rng)
            budget = max(20 * len(data), MIN_MEMORY_BUDGET)
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            start = time.perf_counter()
            try:
                with deadline(5.0):
                    spec = parse(data)
            except SteeringError:
                counts["project errors"] += 1
            except Exception as exc:  # any other exception is a bug: report the case
                raise AssertionError(f"case {case} ({mutator.__name__}): {type(exc).__name__}: {exc}") from exc
            else:
                counts["valid loads"] += 1
                check_valid(spec, source)
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] - base
            assert elapsed < MAX_SECONDS, f"case {case} ({mutator.__name__}) took {elapsed:.2f} s"
            assert peak < budget, f"case {case} ({mutator.__name__}) peaked at {peak} bytes of Python memory (budget {budget})"
            counts["cases"] += 1
            counts[mutator.__name__] += 1
    finally:
        tracemalloc.stop()
    return counts


def _report(record_property, kind: str, counts: Counter) -> None:
    print(
        f"\n{kind}: {counts['cases']} cases, {counts['valid loads']} valid loads, {counts['project errors']} project errors; by mutator "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k not in ("cases", "valid loads", "project errors"))
    )
    for key in ("cases", "valid loads", "project errors"):
        record_property(f"{kind} {key}", counts[key])


def test_fuzz_spec_files(record_property):
    specs = realistic_specs()
    seeds = [spec.to_bytes() for spec in specs]
    fingerprints = {data: spec.fingerprint() for data, spec in zip(seeds, specs, strict=True)}

    def check_valid(spec: SteeringSpec, source: bytes) -> None:
        # tamper evidence: whatever a mutation did, a file that loads holds exactly the content it was written with
        assert spec.fingerprint() == fingerprints[source]

    counts = fuzz(seeds, SPEC_MUTATORS, spec_from_bytes, check_valid, SEED)
    _report(record_property, "spec files", counts)
    assert counts["cases"] == CASES_PER_FORMAT == counts["valid loads"] + counts["project errors"]
    assert counts["project errors"] > CASES_PER_FORMAT // 2


def test_fuzz_gguf_files(tmp_path, record_property):
    specs = realistic_specs()
    seeds = [
        export_gguf_control_vector_bytes(specs[0]),
        export_gguf_control_vector_bytes(specs[0], model_hint="llama"),
        writer_gguf(tmp_path),
    ]

    def check_valid(spec: SteeringSpec, source: bytes) -> None:
        # a GGUF has no checksum: a load may hold changed floats, but always a spec within every limit
        spec.validate()
        again = import_gguf_control_vector_bytes(export_gguf_control_vector_bytes(spec))
        assert all(torch.equal(again.layers[i].vector, spec.layers[i].vector) for i in spec.active_layers())

    counts = fuzz(seeds, GGUF_MUTATORS, import_gguf_control_vector_bytes, check_valid, SEED + 1)
    _report(record_property, "GGUF files", counts)
    assert counts["cases"] == CASES_PER_FORMAT == counts["valid loads"] + counts["project errors"]
    assert counts["project errors"] > CASES_PER_FORMAT // 2
