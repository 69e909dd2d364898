"""General causal LLMs as traders: text-serialised bars and news -> buy / hold / sell.

- `quantlm.llm.tiny`: tiny local Qwen2 / Llama folders (tokenizer trained here), for tests and trying it.
- `quantlm.llm.serialize`: point-in-time prompts in the model's own chat template, labels.
- `quantlm.llm.sft`: LoRA fine-tuning (peft) with the bottom layers frozen, loss on the answer only.
- `quantlm.llm.score`: score = log P(buy) - log P(sell), the Scores table `quantlm backtest` reads.
- `quantlm.llm.dpo`: a preference stage (DPO over realised outcomes) on the SFT adapter.
- `quantlm.llm.latency`: measured decision latency (prompt build + prefill + answer log-probs).
- `quantlm.llm.blocks`: family-agnostic decoder blocks, LoRA targets and pad id.
- In `quantlm run`: the `llm:` section (`quantlm.workflow.llm_stage`).

Heavy libraries (torch, transformers, peft) are imported inside functions.
"""
