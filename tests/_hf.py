"""Shared by the Hugging Face / PEFT tests: tiny models built from configs in code
(nothing is downloaded: HF_HUB_OFFLINE is set before transformers is imported), and a
capture of transformers' loading report."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads it

import torch
import transformers

VOCAB = 97
TOKENS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])


def tiny_gpt2(seed: int = 0) -> Any:
    """GPT-2 with tied input and output embeddings, in eval mode."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model


def tiny_llama(seed: int = 0) -> Any:
    """Llama (untied embeddings), in eval mode."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return transformers.AutoModelForCausalLM.from_config(config).eval()


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def logits(model: Any) -> Any:
    with torch.no_grad():
        return model(TOKENS).logits


def train_steps(model: Any, steps: int = 2) -> Any:
    """A few AdamW steps, so the optimizer has state; returns the optimizer."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(TOKENS, labels=TOKENS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return opt


@contextmanager
def transformers_log() -> Iterator[list[str]]:
    """Everything transformers logs at WARNING or above (its loading report of missing
    and unexpected keys among it) while the block runs."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("transformers")
    handler = Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def load_clean(path: Any, **kw: Any) -> Any:
    """``from_pretrained(path)``, asserting no missing, unexpected or mismatched keys,
    neither in the loading info nor in the log."""
    with transformers_log() as log:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kw)
    assert not any(info.values()), info
    assert not [m for m in log if "MISSING" in m or "UNEXPECTED" in m or "MISMATCH" in m], log
    assert not log, log  # nothing else to warn about either
    return model.eval()


def hf_reference(model: Any, dtype: Any, where: Any) -> Any:
    """The model as Hugging Face itself round-trips it: cast, ``save_pretrained``,
    ``from_pretrained``. (A model cast in memory is no reference for bf16: ``.to()``
    also casts buffers such as RoPE's ``inv_freq``, which ``from_pretrained`` keeps in
    float32.)"""
    if dtype is None:
        return model
    copy = transformers.AutoModelForCausalLM.from_config(model.config)
    copy.load_state_dict(model.state_dict())
    copy.to(dtype).save_pretrained(where)
    return load_clean(where)
