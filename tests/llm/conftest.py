"""Tiny local model folders shared by the LLM tests (built once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    from quantlm.llm.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", family="qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from quantlm.llm.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", family="llama")


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory):
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market

    store = Store(tmp_path_factory.mktemp("llm_store") / "store")
    write_market(store, SynthConfig(n_symbols=8, start="2020-01-02", end="2020-10-30", seed=3))
    return store


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A family we did not build for: GPT-2 style (blocks under transformer.h, Conv1D layers, learned
    positions), its tokenizer without a chat template and without a pad token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from quantlm.llm.tiny import make_tokenizer

    folder = tmp_path_factory.mktemp("tiny") / "gpt2"
    tok = make_tokenizer()
    tok.chat_template = None
    tok.pad_token = None
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
