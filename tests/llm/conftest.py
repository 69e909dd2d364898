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
