"""The llama.cpp backend: the model's GGUF through llama-cpp-python, steered with llama.cpp control vectors.

A control vector adds one vector per layer to the output residual stream of every position, so this backend steers
exactly the specs that only add: no projection cap, no ablation, ``skip_first_tokens == 0``, and no add at layer 0
(llama.cpp's control-vector buffer starts at block 1; block 0 has no slot, see :mod:`vectors.convention`). Any other
spec is refused with a :class:`~vectors.SteeringError` naming the op and the backend to use;
:class:`LlamaCppWithFallback` (what ``--backend auto`` serves on CPU) routes those calls to the transformers backend.

Per-request steering: a control vector belongs to a llama.cpp *context*, not to the model, so one loaded model carries
a few contexts (``parallel``, default 2), each with its own control vector, KV cache and ``threads``. The prompts of
a call (the compare pair's baseline and steered pane) run at the same time, one Python thread per context:
llama-cpp-python calls llama.cpp through ctypes, which releases the GIL, so two 1-thread contexts keep two cores
busy. Prompt ``i`` of a call always runs on context ``i % parallel`` (the app's baseline pane on context 0, its steered
pane on context 1), so a context keeps its control vector between calls that steer alike.

The vector data comes from the shared steering math (:func:`engine.steering_ops.layer_rows`: ``scale * vector`` in
float32, what the transformers hook adds), laid out as llama.cpp reads it: ``n_embd`` floats per block from block 1
on. Sampling is the transformers backend's own code (greedy argmax; temperature and top-p with one seeded generator
per prompt, ``seed + i``) on llama.cpp's logits, so every :class:`~engine.generation.GenerationConfig` field maps one
to one.

Weights: the default model ships as 4-bit Q4_1 (the transformers default model is these weights dequantised). ggml has
no repacked kernel for Q4_1 on x86, so its prompt prefill runs 2.1x slower than an 8-bit Q8_0 copy of the same
weights, while decoding is ~10% faster (docs/BENCHMARKS.md); ``weights="auto"`` therefore serves the default model
from a Q8_0 copy that llama.cpp's own quantizer writes once into the cache, and any other GGUF as it is.

Not bit-exact against the reference: 4-bit weights re-rounded to 8 bits, and llama.cpp rounds activations to 8 bits
in its quantised matrix products, so greedy tokens follow the transformers backend's for a while and may then drift
(tests/test_llamacpp_backend.py measures how far).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.generation import Generation, GenerationConfig, IncrementalDecoder, StreamEvent, spec_keys
from engine.hf_backend import HFSteerModel
from engine.sampling import pick_tokens
from engine.stateful import SteerableModel
from engine.steering_ops import layer_rows
from vectors import LayerSteeringSpec, SteeringError, SteeringSpec
from vectors.convention import layer_to_llamacpp

__all__ = [
    "DEFAULT_N_CTX",
    "ControlVector",
    "LlamaCppSteerModel",
    "LlamaCppWithFallback",
    "WEIGHTS",
    "control_vector",
    "inexpressible",
    "llamacpp_available",
    "q8_0_copy",
]

logger = logging.getLogger("sidesteer.engine")

DEFAULT_N_CTX = 4096  # tokens per context (prompt + new tokens); the KV cache of the default model is ~23 KB a token
USE_INSTEAD = "use the transformers backend (--backend hf; --backend auto serves such specs with it)"
WEIGHTS = ("auto", "q8_0", "file")  # LlamaCppSteerModel(weights=...): auto = q8_0 for the default model, else file


def llamacpp_available() -> bool:
    """Whether llama-cpp-python imports here (its shared library loads)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken native library fails in many ways; any of them means "not here"
        return False
    return True


def _layer_problem(index: int, layer: LayerSteeringSpec) -> str | None:
    if layer.projection_cap is not None:
        return f"layers[{index}]: a projection cap cannot be steered by llama.cpp (its control vectors only add)"
    if layer.ablation is not None:
        return f"layers[{index}]: an ablation cannot be steered by llama.cpp (its control vectors only add)"
    if layer.vector is not None and index == 0:
        return "layers[0]: llama.cpp has no control-vector slot for block 0's output (its buffer starts at block 1)"
    return None


def inexpressible(spec: SteeringSpec | None) -> str | None:
    """Why llama.cpp cannot steer ``spec`` exactly (the first reason), or None when it can (None: unsteered).

    llama.cpp steers a spec exactly when every op is an add, at layer 1 or later, at every position.
    """
    if spec is None:
        return None
    if spec.skip_first_tokens:
        return (
            f"skip_first_tokens: {spec.skip_first_tokens} cannot be steered by llama.cpp (its control vectors add at "
            "every position)"
        )
    for index in spec.active_layers():
        problem = _layer_problem(index, spec.layers[index])
        if problem is not None:
            return problem
    return None


@dataclass(frozen=True)
class ControlVector:
    """One spec as llama.cpp's ``llama_set_adapter_cvec`` takes it.

    Attributes:
        data: ``[(num_layers - 1) * hidden]`` float32: block ``n``'s add at ``(n - 1) * hidden`` (llama.cpp's buffer
            starts at block 1), zero for blocks the spec leaves alone.
        il_start: First block llama.cpp adds at (inclusive).
        il_end: Last block llama.cpp adds at (inclusive).
        key: The spec's fingerprint (a context keeps a control vector with the same key).
    """

    data: np.ndarray
    il_start: int
    il_end: int
    key: str


def control_vector(spec: SteeringSpec, num_layers: int, hidden_size: int, key: str | None = None) -> ControlVector:
    """The control vector of an additive spec, from the shared steering math (:func:`engine.steering_ops.layer_rows`).

    Sidesteer layer ``L`` (the output of 0-based block ``L``) is llama.cpp block ``L``
    (:func:`vectors.convention.layer_to_llamacpp`), whose floats start at ``(L - 1) * hidden_size``.

    ``key`` is the spec's fingerprint when the caller has it already (computed here otherwise).

    Raises:
        SteeringError: The spec has an op llama.cpp cannot steer (:func:`inexpressible`), or no add at all.
    """
    problem = inexpressible(spec)
    if problem is not None:
        raise SteeringError(f"{problem}; {USE_INSTEAD}")
    data = np.zeros((num_layers - 1) * hidden_size, dtype=np.float32)
    blocks = []
    for index in spec.active_layers():
        block = layer_to_llamacpp(index)
        add = layer_rows(spec.layers[index], hidden_size)["add"]  # [hidden] float32: scale * vector, as the hooks add
        data[(block - 1) * hidden_size : block * hidden_size] = add.numpy()
        blocks.append(block)
    if not blocks:
        raise SteeringError("spec: no layer has an add vector; pass None for an unsteered prompt")
    return ControlVector(data, min(blocks), max(blocks), key or spec.fingerprint())


def _sampler_of(config: GenerationConfig, row: int) -> torch.Generator:
    """Prompt ``row``'s generator, seeded as the transformers backend seeds it (``seed_for(row)``, else at random)."""
    seed = config.seed_for(row)
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else torch.seed())
    return generator


def _pick(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator) -> int:
    """One token from ``[vocab]`` logits with the reference's sampling code (greedy, temperature, top-p)."""
    return int(pick_tokens(logits[None], config, [generator])[0])


class _Library:
    """The llama.cpp functions this backend calls, by the names of the installed llama-cpp-python."""

    def __init__(self) -> None:
        import llama_cpp

        self.lib = llama_cpp
        # llama-cpp-python 0.3.x prints every llama.cpp log line to stderr unless its logger says otherwise.
        python_logger = logging.getLogger("llama-cpp-python")
        if python_logger.level == logging.NOTSET:
            python_logger.setLevel(logging.ERROR)
        # Renamed across versions: llama_set_adapter_cvec (0.3.2x+), llama_apply_adapter_cvec, llama_control_vector_apply.
        names = ("llama_set_adapter_cvec", "llama_apply_adapter_cvec", "llama_control_vector_apply")
        self.set_cvec = next((getattr(llama_cpp, n) for n in names if hasattr(llama_cpp, n)), None)
        if self.set_cvec is None:
            raise SteeringError(
                f"llama_cpp {getattr(llama_cpp, '__version__', '?')} has none of {', '.join(names)}; install "
                "llama-cpp-python >= 0.3 (pip install 'sidesteer[llamacpp]')"
            )
        llama_cpp.llama_backend_init()

    @staticmethod
    @functools.cache
    def get() -> _Library:
        """The process's one instance (llama.cpp's backend is initialised once; an error is raised again each call)."""
        return _Library()

    def clear_memory(self, ctx: Any) -> None:
        lib = self.lib
        if hasattr(lib, "llama_memory_clear"):
            lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        else:  # llama-cpp-python before the memory API
            lib.llama_kv_self_clear(ctx)

    def truncate_memory(self, ctx: Any, keep: int) -> bool:
        """Drop every cached position from ``keep`` on (sequence 0); False where the model's memory cannot do that."""
        lib = self.lib
        if hasattr(lib, "llama_memory_seq_rm"):
            return bool(lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), 0, keep, -1))
        if hasattr(lib, "llama_kv_self_seq_rm"):  # llama-cpp-python before the memory API
            return bool(lib.llama_kv_self_seq_rm(ctx, 0, keep, -1))
        return False


def q8_0_copy(source: Path, threads: int = 1) -> Path:
    """An 8-bit (Q8_0) copy of the GGUF ``source``, written once by llama.cpp's quantizer into the cache.

    Keyed by the source's path, size and modification time (``$SIDESTEER_CACHE/gguf/<name>.<key>.Q8_0.gguf``); written
    to a temporary file and renamed, so a concurrent start never loads half a file.

    Raises:
        SteeringError: llama.cpp's quantizer failed (the message names the file).
    """
    from engine.default_model import cache_dir

    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    name = source.name.removesuffix(".gguf").split(".")[0]
    target = cache_dir() / "gguf" / f"{name}.{key}.Q8_0.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{name}-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    try:
        lib = _Library.get().lib
        params = lib.llama_model_quantize_default_params()
        params.ftype = lib.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        params.nthread = threads
        rc = lib.llama_model_quantize(str(source).encode(), partial.encode(), ctypes.byref(params))
        if rc != 0:
            raise SteeringError(
                f"model: llama.cpp could not write a Q8_0 copy of {str(source)!r} (return code {rc}); pass weights='file'"
            )
        os.chmod(partial, 0o644)  # as any cached file (mkstemp made it private)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    logger.info("llama.cpp: wrote a Q8_0 copy of %s to %s", source, target)
    return target


class _Context:
    """One llama.cpp context on the shared model: its control vector, its KV cache, its threads."""

    def __init__(self, lib: _Library, model: Any, n_ctx: int, threads: int, n_vocab: int, hidden_size: int) -> None:
        params = lib.lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx  # a whole prompt in one llama_decode call (llama.cpp splits it into n_ubatch pieces)
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = lib.lib.llama_init_from_model(model, params)
        if not self.ctx:
            raise SteeringError(f"llama.cpp: could not create a context of {n_ctx} tokens; lower n_ctx")
        self.lib = lib
        self.n_vocab = n_vocab
        self.hidden_size = hidden_size
        self.steering_key: str | None = None
        # The tokens whose keys and values the cache holds, in order: every one was decoded under ``steering_key``.
        self.cached: list[int] = []

    def steer(self, vector: ControlVector | None) -> None:
        """Install ``vector`` (None: none) unless this context holds it already."""
        key = None if vector is None else vector.key
        if key == self.steering_key:
            return
        self.cached = []  # a control vector steers every position: no cached one holds for the new vector
        if vector is None:
            rc = self.lib.set_cvec(self.ctx, None, 0, self.hidden_size, 0, 0)
        else:
            data = vector.data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = self.lib.set_cvec(self.ctx, data, vector.data.size, self.hidden_size, vector.il_start, vector.il_end)
        if rc != 0:
            self.steering_key = "?"  # unknown state: set it again next time
            raise SteeringError(f"llama.cpp: setting the control vector failed (return code {rc})")
        self.steering_key = key

    def start(self, prompt_ids: Sequence[int]) -> int:
        """Run the prompt (the logits of its last token are then ready); returns how many of its tokens were reused.

        The cache keeps the longest prefix this context already decoded under the same control vector (a chat
        template's system turn, an earlier turn of the conversation, the same prompt again) and decodes only the rest;
        at least the last token is decoded, for its logits.
        """
        keep = 0
        for cached, new in zip(self.cached, prompt_ids[: len(prompt_ids) - 1], strict=False):
            if cached != new:
                break
            keep += 1
        if keep == 0 or not self.lib.truncate_memory(self.ctx, keep):
            keep = 0
            self.lib.clear_memory(self.ctx)
        self.cached = list(prompt_ids[:keep])
        self.decode(prompt_ids[keep:])
        return keep

    def decode(self, ids: Sequence[int]) -> None:
        tokens = (ctypes.c_int32 * len(ids))(*ids)
        rc = self.lib.lib.llama_decode(self.ctx, self.lib.lib.llama_batch_get_one(tokens, len(ids)))
        if rc != 0:
            self.cached = []
            self.lib.clear_memory(self.ctx)  # its state after a failed decode is unknown: start afresh next time
            raise SteeringError(f"llama.cpp: llama_decode returned {rc} on {len(ids)} tokens")
        self.cached.extend(ids)

    def logits(self) -> torch.Tensor:
        """``[vocab]`` float32 logits of the last decoded token (a copy: the next decode overwrites llama.cpp's)."""
        pointer = self.lib.lib.llama_get_logits_ith(self.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())

    def free(self) -> None:
        if self.ctx:
            self.lib.lib.llama_free(self.ctx)
            self.ctx = None


def _load_tokenizer(model: str, gguf: Path) -> tuple[Any, set[int], str]:
    """The transformers tokenizer (chat template included), the end-of-sequence ids and the model id.

    The default model's tokenizer comes from its converted transformers folder, so prompts are the very ids the
    transformers backend feeds; a ``.gguf`` file's from the file itself.
    """
    from transformers import AutoTokenizer
    from transformers import GenerationConfig as HFGenerationConfig

    from engine.default_model import DEFAULT_MODEL_ID, is_default, resolve_model_path

    eos: set[int] = set()
    if is_default(model):
        folder = resolve_model_path(model)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model_id = DEFAULT_MODEL_ID
        sources: list[Any] = [HFGenerationConfig.from_pretrained(folder), tokenizer]
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model_id = gguf.name
        sources = [tokenizer]
    for source in sources:  # as the transformers backend collects them
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, (list, tuple)):
            eos.update(int(v) for v in value)
    return tokenizer, eos, model_id


class LlamaCppSteerModel(SteerableModel):
    """Steerable llama.cpp model (llama-cpp-python) for additive specs.

    Args:
        model_name_or_path: ``"default"`` (the default model's Q4_1 GGUF) or the path of a ``.gguf`` file.
        threads: llama.cpp threads per context (1: robust on shared cores, see the module docstring).
        parallel: Contexts, i.e. prompts of one call that run at the same time.
        n_ctx: Tokens per context (prompt + new tokens); the backend's context length.
        weights: ``"q8_0"``: serve an 8-bit copy of the file's weights (:func:`q8_0_copy`; prefill 2.1x faster than
            Q4_1 on x86); ``"file"``: the file's own; ``"auto"``: q8_0 for the default model, the file's own otherwise.

    Raises:
        SteeringError: llama-cpp-python is missing, the model is not a GGUF, or llama.cpp cannot load it.
    """

    backend = "llama.cpp"

    def __init__(
        self,
        model_name_or_path: str = "default",
        *,
        threads: int = 1,
        parallel: int = 2,
        n_ctx: int = DEFAULT_N_CTX,
        weights: str = "auto",
    ) -> None:
        for name, value in (("threads", threads), ("parallel", parallel), ("n_ctx", n_ctx)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SteeringError(f"{name}: {value!r} is not a positive integer; pass e.g. 1")
        if weights not in WEIGHTS:
            raise SteeringError(f"weights: {weights!r} is not one of {', '.join(WEIGHTS)}; pass e.g. 'auto'")
        if not llamacpp_available():
            raise SteeringError(
                "backend: llama-cpp-python is not installed (or its library does not load); pip install "
                "'sidesteer[llamacpp]', or use --backend hf"
            )
        from engine.default_model import gguf_source, is_default

        if not (is_default(model_name_or_path) or model_name_or_path.endswith(".gguf")):
            raise SteeringError(
                f"model: the llama.cpp backend loads GGUF files, not {model_name_or_path!r}; pass 'default' or a .gguf "
                "path, or use --backend hf"
            )
        self.gguf = gguf_source() if is_default(model_name_or_path) else Path(model_name_or_path)
        if not self.gguf.is_file():
            raise SteeringError(f"model: {str(self.gguf)!r} is not a file; pass the path of a .gguf file")
        self._lib = _Library.get()
        if weights == "q8_0" or (weights == "auto" and is_default(model_name_or_path)):
            self.weights_file = q8_0_copy(self.gguf, threads)
        else:
            self.weights_file = self.gguf
        lib = self._lib.lib
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        # No "extra" weight buffers (AMX, repacking): ggml's AMX path gives wrong results for Q4_0/Q4_1
        # (llama.cpp PR 16315) and crashed in ggml_backend_amx_mul_mat on this project's AMX CPUs (issue 20824).
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        self._model = lib.llama_model_load_from_file(str(self.weights_file).encode(), params)
        if not self._model:
            raise SteeringError(f"model: llama.cpp could not load {str(self.weights_file)!r}; is it a GGUF model file?")
        self._n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))
        tokenizer, self._eos_ids, model_id = _load_tokenizer(model_name_or_path, self.gguf)
        super().__init__(model_id, tokenizer, int(lib.llama_model_n_layer(self._model)), int(lib.llama_model_n_embd(self._model)))
        self.threads, self.parallel, self.n_ctx = threads, parallel, min(n_ctx, int(lib.llama_model_n_ctx_train(self._model)))
        self.device = "cpu"
        self._contexts: list[_Context] = []
        self._lock = threading.Lock()
        self._pool(parallel)  # at start-up, not in the first visitor's time to first token

    def _context_length(self) -> int:
        return self.n_ctx

    def info(self) -> dict[str, Any]:
        """Backend, model id, layers, hidden size, the GGUF file served (and its source), and threads x contexts."""
        return {
            **super().info(),
            "gguf": str(self.weights_file),
            "gguf_source": str(self.gguf),
            "dtype": "GGUF " + self.weights_file.stem.rsplit(".", 1)[-1],
            "device": f"cpu ({self.parallel} contexts x {self.threads} thread(s))",
        }

    # -- what llama.cpp can steer ---------------------------------------------------------------------------------
    def _check_support(self, layers: Any) -> None:
        for index, layer in layers.items():
            problem = _layer_problem(index, layer)
            if problem is not None:
                raise SteeringError(f"{problem}; {USE_INSTEAD}")

    def validate_spec(self, spec: SteeringSpec) -> SteeringSpec:
        """:meth:`SteerableBackend.validate_spec`, then refuse what llama.cpp cannot steer exactly.

        Raises:
            SteeringError: As there, and for a projection cap, an ablation, an add at layer 0 or
                ``skip_first_tokens > 0``: each names the field and the backend to use instead.
        """
        spec = super().validate_spec(spec)
        problem = inexpressible(spec)
        if problem is not None:
            raise SteeringError(f"{problem}; {USE_INSTEAD}")
        return spec

    # -- generation -----------------------------------------------------------------------------------------------
    def _pool(self, size: int) -> list[_Context]:
        while len(self._contexts) < size:
            self._contexts.append(_Context(self._lib, self._model, self.n_ctx, self.threads, self._n_vocab, self.hidden_size))
        return self._contexts[:size]

    def _one(
        self,
        context: _Context,
        row: int,
        ids: list[int],
        config: GenerationConfig,
        vector: ControlVector | None,
        out: queue.Queue,
        stop: threading.Event,
    ) -> None:
        """Generate prompt ``row`` on ``context``, putting ``(row, token, finish reason or None)`` on ``out``."""
        generator = _sampler_of(config, row)
        context.steer(vector)
        context.start(ids)
        count = 0
        while True:
            token = _pick(context.logits(), config, generator)
            count += 1
            if token in self._eos_ids and not config.ignore_eos:
                reason: str | None = "stop"
            else:
                reason = "length" if count >= config.max_new_tokens else None
            out.put((row, token, reason))
            if reason is not None:
                return
            if stop.is_set():
                out.put((row, None, "abort"))
                return
            context.decode([token])

    def _steps(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[tuple[int, int | None, str | None]]:
        """``(row, token, finish reason or None)`` as the contexts produce them; closing the iterator stops them all."""
        for row, ids in enumerate(prompt_ids):
            if not ids:
                raise SteeringError(f"prompts[{row}]: the prompt has no tokens; pass non-empty text")
        keys = spec_keys(specs)  # one fingerprint per distinct spec
        vectors: dict[str, ControlVector] = {}
        for spec, key in zip(specs, keys, strict=True):
            if spec is not None and key not in vectors:
                vectors[key] = control_vector(spec, self.num_layers, self.hidden_size, key)  # type: ignore[index]
        row_vectors = [None if key is None else vectors[key] for key in keys]
        out: queue.Queue = queue.Queue()
        stop = threading.Event()

        def work(context: _Context, rows: list[int]) -> None:
            try:
                for row in rows:
                    if stop.is_set():
                        return
                    self._one(context, row, prompt_ids[row], config, row_vectors[row], out, stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
                out.put(exc)
            finally:
                out.put(None)

        with self._lock:
            contexts = self._pool(min(self.parallel, len(prompt_ids)))
            n = len(contexts)
            threads = [
                threading.Thread(target=work, args=(c, list(range(i, len(prompt_ids), n))), daemon=True, name=f"llama.cpp-{i}")
                for i, c in enumerate(contexts)
            ]
            for thread in threads:
                thread.start()
            try:
                running = n
                while running:
                    item = out.get()
                    if item is None:
                        running -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
            finally:
                stop.set()
                for thread in threads:
                    thread.join()

    def _generate(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None], decode_text: bool = True
    ) -> list[Generation]:
        tokens: list[list[int]] = [[] for _ in prompt_ids]
        reasons: list[str] = ["length"] * len(prompt_ids)
        for row, token, reason in self._steps(prompt_ids, config, specs):
            if token is not None:
                tokens[row].append(token)
            if reason is not None:
                reasons[row] = reason
        keys = spec_keys(specs)
        texts = self.decode_all(tokens, decode_text)
        return Generation.batch(texts, tokens, reasons, prompt_ids, keys)

    def _generate_stream(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[StreamEvent]:
        decoders = [IncrementalDecoder(self.tokenizer) for _ in prompt_ids]
        for row, token, reason in self._steps(prompt_ids, config, specs):
            done = reason is not None
            delta = decoders[row].push([] if token is None else [token], final=done)
            yield StreamEvent(row, delta, list(decoders[row].ids), done, reason)  # type: ignore[arg-type]

    def _mean_activations(self, prompt_ids: list[list[int]], layers: list[int]) -> dict[int, torch.Tensor]:
        raise SteeringError(
            "mean_activations: the llama.cpp backend does not read activations; use the transformers backend "
            "(--backend hf; --backend auto loads it for this)"
        )

    def close(self) -> None:
        """Free the contexts and the model."""
        with self._lock:
            for context in self._contexts:
                context.free()
            self._contexts = []
            if self._model:
                self._lib.lib.llama_model_free(self._model)
                self._model = None


class LlamaCppWithFallback(SteerableModel):
    """``--backend auto`` on CPU: llama.cpp for what it steers exactly, transformers for the rest.

    A call whose specs are all additive (:func:`inexpressible` is None for each) runs on :class:`LlamaCppSteerModel`;
    a call with any projection cap, ablation, add at layer 0 or ``skip_first_tokens`` runs *whole* on the transformers
    backend (both panes of a compare pair come from one model, so their difference is the steering's alone), as do
    :meth:`mean_activations` and :meth:`trace_projection`. The transformers backend is loaded on its first use (a few
    seconds; its fp32 weights take ~0.5 GB for the default model) and kept.

    Args:
        model_name_or_path: ``"default"`` or a ``.gguf`` path.
        threads, parallel, n_ctx: As for :class:`LlamaCppSteerModel`.
        fallback: Builds the transformers backend (tests pass their own); default: the same model in float32.
    """

    backend = "llama.cpp"

    def __init__(
        self,
        model_name_or_path: str = "default",
        *,
        threads: int = 1,
        parallel: int = 2,
        n_ctx: int = DEFAULT_N_CTX,
        fallback: Any = None,
    ) -> None:
        self.fast = LlamaCppSteerModel(model_name_or_path, threads=threads, parallel=parallel, n_ctx=n_ctx)
        super().__init__(self.fast.model_id, self.fast.tokenizer, self.fast.num_layers, self.fast.hidden_size)
        self.device = self.fast.device
        self._model_name = model_name_or_path
        self._make_fallback = fallback or self._default_fallback
        self._fallback: SteerableModel | None = None
        self._fallback_lock = threading.Lock()

    def _default_fallback(self) -> SteerableModel:
        if self._model_name.endswith(".gguf"):
            from transformers import AutoModelForCausalLM

            path = Path(self._model_name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
            return HFSteerModel.from_model(model, self.tokenizer, model_id=self.model_id)
        return HFSteerModel(self._model_name, dtype="float32")

    @property
    def fallback(self) -> SteerableModel:
        """The transformers backend, loaded on first use."""
        with self._fallback_lock:
            if self._fallback is None:
                logger.info("loading the transformers backend for what llama.cpp cannot steer (once)")
                self._fallback = self._make_fallback()
            return self._fallback

    def route(self, specs: Sequence[SteeringSpec | None]) -> SteerableModel:
        """The backend a call with these (validated) specs runs on."""
        return self.fast if all(inexpressible(s) is None for s in specs) else self.fallback

    def _context_length(self) -> int:
        return self.fast.context_length

    def info(self) -> dict[str, Any]:
        """:meth:`LlamaCppSteerModel.info` and whether the transformers fallback is loaded."""
        loaded = "loaded" if self._fallback is not None else "loads on first use"
        return {**self.fast.info(), "fallback": f"transformers float32 for caps, ablations, activations ({loaded})"}

    def _generate(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None], decode_text: bool = True
    ) -> list[Generation]:
        return self.route(specs)._generate(prompt_ids, config, specs, decode_text)

    def _generate_stream(
        self, prompt_ids: list[list[int]], config: GenerationConfig, specs: list[SteeringSpec | None]
    ) -> Iterator[StreamEvent]:
        yield from self.route(specs)._generate_stream(prompt_ids, config, specs)

    def _mean_activations(self, prompt_ids: list[list[int]], layers: list[int]) -> dict[int, torch.Tensor]:
        return self.fallback._mean_activations(prompt_ids, layers)

    def _trace_rows(self, ids: list[int], spec: SteeringSpec, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.fallback._trace_rows(ids, spec, layer)

    def close(self) -> None:
        """Free llama.cpp's model and contexts, and the transformers backend if it was loaded."""
        self.fast.close()
        if self._fallback is not None:
            self._fallback.close()
