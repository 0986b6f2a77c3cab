"""Test helpers: a tiny random Llama and a character-level tokenizer, no files needed."""

from __future__ import annotations

import torch


class CharTokenizer:
    """Token = 3 + byte value; 0 = pad, 1 = bos, 2 = eos."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": ([1] if add_special_tokens else []) + [3 + b for b in text.encode()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(max(0, min(255, i - 3)) for i in ids if i >= 3).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + ("<assistant>" if add_generation_prompt else "")
        return self(text)["input_ids"]


def tiny_llama(seed: int = 0, layers: int = 4, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=260,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return model


def tiny_hf(seed: int = 0, layers: int = 4, hidden: int = 64):
    from engine import HFSteerModel

    return HFSteerModel.from_model(tiny_llama(seed, layers, hidden), CharTokenizer(), model_id="tiny-llama")
