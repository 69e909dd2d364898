"""Point-in-time prompts for a general LLM: bars and visible texts -> chat messages -> buy / hold / sell.

Bar encoding (one line per bar, oldest first, the decision bar last), all integers:

    r+12 g-3 h25 v118

- ``r``: close-to-close return in basis points, close(i) / close(i-1) - 1 (adjusted prices:
  price * adj_factor where given);
- ``g``: open gap in bp, open(i) / close(i-1) - 1;
- ``h``: high-low range in bp of the previous close, (high(i) - low(i)) / close(i-1);
- ``v``: volume relative to its mean over the last 20 bars (bar i included), x100.

Every field reads bars <= i only. The symbol's first bar has no previous close: r, g are 0 and h uses
its own close. A prompt at decision time t (after t's close) holds the last `window_bars` bars up to t
and the symbol's (and market-wide) texts visible at t (`calendars.visible_session` <= t) that became
visible within the last `text_sessions` bars, cut to `max_text_chars` (newest kept). If the rendered
prompt is longer than `max_prompt_tokens`, the OLDEST bars are dropped first (at least one is kept).
The prompt is rendered with the tokenizer's own chat template (`apply_chat_template`, generation
prompt on); a tokenizer without one gets "system\\n\\nuser\\n\\nanswer: ".

Labels: the cost-aware direction of `quantlm.features.targets` at horizon 1 (ret_1 = open(t+2) /
open(t+1) - 1 against the round-trip cost), computed from bars up to `train_end` only, so a label is
present only where it was known by the training end.

Answers: ``buy`` / ``hold`` / ``sell``; with ``answer_return`` the realised ret_1 in basis points
follows the word, e.g. ``buy +35bp`` (the model then also learns to state an expected return). The
score never reads that number: it stays the constrained log P(word) of `quantlm.llm.score`, and the
word is tokenised on its own in both forms, so the two answer styles score the same way.

`quantlm finetune export` JSON Lines (`quantlm.finetune.jsonl`) become prompts too
(`examples_from_jsonl`): each line's bars and text, its ``signal`` as the answer and its
``returns["1"]`` as the optional return.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ANSWERS = ("sell", "hold", "buy")  # index = direction code of quantlm.features.targets
FALLBACK_TEMPLATE = "{system}\n\n{user}\n\nanswer: "  # for tokenizers without a chat template
SYSTEM = ("You are a trader. You read one stock's daily bars (oldest first; r: close-to-close return in bp, "
          "g: open gap in bp, h: high-low range in bp, v: volume as % of its 20-bar mean) and the news "
          "visible now, and answer buy, hold or sell for the next session.")


@dataclass
class PromptConfig:
    window_bars: int = 32
    max_prompt_tokens: int = 1024
    text_sessions: int = 3
    max_text_chars: int = 600
    volume_bars: int = 20
    answer_return: bool = False  # answers "buy +35bp" (ret_1 in bp) instead of "buy"
    system: str = SYSTEM

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Examples:
    """Prompts (chat-rendered strings) with their symbol, ts and answer (None where no label)."""

    symbol: list[str] = field(default_factory=list)
    ts: list[pd.Timestamp] = field(default_factory=list)
    prompt: list[str] = field(default_factory=list)
    answer: list[str | None] = field(default_factory=list)
    ret: list[float | None] = field(default_factory=list)  # realised ret_1 (fraction) where known

    def __len__(self) -> int:
        return len(self.prompt)


def answer_text(code: int, ret: float | None = None, with_return: bool = False) -> str:
    """The answer for direction code 0/1/2 (sell/hold/buy); with_return and a finite ret (fraction) add
    its basis points: "buy +35bp"."""
    word = ANSWERS[int(code)]
    if with_return and ret is not None and np.isfinite(ret):
        return f"{word} {int(np.rint(ret * 1e4)):+d}bp"
    return word


def bar_lines(bars: pd.DataFrame, volume_bars: int = 20) -> list[str]:
    """The encoded lines of one symbol's bars (sorted by ts); line i reads bars <= i only."""
    adj = bars["adj_factor"].fillna(1.0).to_numpy(float) if "adj_factor" in bars else 1.0
    o, h, lo, c = (bars[k].to_numpy(float) * adj for k in ("open", "high", "low", "close"))
    prev = np.r_[c[:1], c[:-1]]
    r = np.rint((c / prev - 1) * 1e4).astype(np.int64)
    g = np.rint((o / prev - 1) * 1e4).astype(np.int64)
    rng = np.rint((h - lo) / prev * 1e4).astype(np.int64)
    vol = bars["volume"].to_numpy(float)
    mean = pd.Series(vol).rolling(volume_bars, min_periods=1).mean().to_numpy()
    v = np.rint(np.where(mean > 0, vol / np.where(mean > 0, mean, 1) * 100, 100)).astype(np.int64)
    return [f"r{a:+d} g{b:+d} h{x} v{y}" for a, b, x, y in zip(r, g, rng, v)]


def render(tokenizer, system: str, user: str) -> str:
    """The prompt in the tokenizer's chat template, ending where the assistant's answer starts.

    A template that refuses a system turn (Gemma's, for one) gets the system text at the head of the
    user turn; a tokenizer without a template gets FALLBACK_TEMPLATE: "system\\n\\nuser\\n\\nanswer: ".
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja2 TemplateError raised by the template itself (e.g. "System role not supported")
            if "system" not in str(e).lower():
                raise
            merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(system=system, user=user)


def _user(lines: list[str], text: str | None) -> str:
    body = "bars (oldest first):\n" + "\n".join(lines)
    if text:
        body += "\nnews:\n" + text
    return body + "\nanswer with one word: buy, hold or sell"


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokens_per_bar(tokenizer, lines: list[str]) -> float:
    """Mean tokens one encoded bar line (with its newline) costs under `tokenizer`."""
    if not lines:
        return 0.0
    return n_tokens(tokenizer, "\n".join(lines) + "\n") / len(lines)


def build_prompt(tokenizer, lines: list[str], text: str | None, cfg: PromptConfig) -> str:
    """Render with the last `window_bars` lines, dropping the oldest until within max_prompt_tokens."""
    lines = lines[-cfg.window_bars:]
    if text and len(text) > cfg.max_text_chars:
        text = text[-cfg.max_text_chars:]
    prompt = render(tokenizer, cfg.system, _user(lines, text))
    n = n_tokens(tokenizer, prompt)
    while n > cfg.max_prompt_tokens and len(lines) > 1:
        per = max(tokens_per_bar(tokenizer, lines), 1.0)
        drop = min(len(lines) - 1, max(1, int(np.ceil((n - cfg.max_prompt_tokens) / per))))
        lines = lines[drop:]
        prompt = render(tokenizer, cfg.system, _user(lines, text))
        n = n_tokens(tokenizer, prompt)
    return prompt


def _visible_texts(store, symbols, market: str) -> dict[str, pd.DataFrame]:
    """Per symbol: its texts and the market-wide ones, with their visible `session`, ordered."""
    from quantlm.data.text import align_texts, text_content

    texts = store.texts(symbols=sorted(symbols))
    if len(texts) == 0:
        return {}
    texts = align_texts(texts.reset_index(drop=True), market)
    texts = texts.assign(content=text_content(texts)).sort_values(["session", "published_at", "text_id"])
    sym = texts["symbol"].fillna("").astype(str)
    market_wide = texts[sym == ""]
    return {s: pd.concat([g, market_wide]).sort_values(["session", "published_at", "text_id"])
            for s, g in texts[sym != ""].groupby(sym[sym != ""], sort=False)} | {"": market_wide}


def examples_from_frames(tokenizer, bars: pd.DataFrame, texts: dict[str, pd.DataFrame], start=None, end=None,
                         cfg: PromptConfig | None = None, labels: pd.Series | None = None,
                         need_label: bool = False, returns: pd.Series | None = None) -> Examples:
    """Prompts for every (symbol, ts) with start <= ts <= end and window_bars bars of history.

    bars: canonical daily bars (sorted per symbol); texts: `_visible_texts` output; labels: direction
    codes aligned with `bars` (-1 unknown); returns: ret_1 aligned with `bars` (fraction, for
    cfg.answer_return); need_label keeps labelled rows only.
    """
    cfg = cfg or PromptConfig()
    lo = pd.Timestamp(start) if start is not None else pd.Timestamp.min
    hi = pd.Timestamp(end) if end is not None else pd.Timestamp.max
    lab = labels.to_numpy() if labels is not None else None
    rets = returns.to_numpy(float) if returns is not None else None
    sym_col = bars["symbol"].astype(str).to_numpy()
    bounds = np.flatnonzero(np.r_[True, sym_col[1:] != sym_col[:-1], True])
    rows = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        g = bars.iloc[a:b]
        sym = sym_col[a]
        ts = pd.DatetimeIndex(g["ts"])
        lines = bar_lines(g, cfg.volume_bars)
        tx = texts.get(sym, texts.get(""))
        tx_ts = tx["session"].to_numpy(dtype="datetime64[ns]") if tx is not None and len(tx) else None
        for i in np.flatnonzero((ts >= lo) & (ts <= hi)):
            if i < cfg.window_bars - 1:
                continue
            answer = None
            if lab is not None and lab[a + i] >= 0:
                answer = answer_text(lab[a + i], rets[a + i] if rets is not None else None, cfg.answer_return)
            if need_label and answer is None:
                continue
            text = None
            if tx_ts is not None:
                k0 = np.searchsorted(tx_ts, ts[max(0, i - cfg.text_sessions + 1)].to_datetime64(), side="left")
                k1 = np.searchsorted(tx_ts, ts[i].to_datetime64(), side="right")
                if k1 > k0:
                    text = "\n\n".join(tx["content"].iloc[k0:k1])
            ret = float(rets[a + i]) if rets is not None and answer is not None else None
            rows.append((ts[i], sym, build_prompt(tokenizer, lines[:i + 1], text, cfg), answer, ret))
    return _collect(rows)


def _collect(rows: list[tuple]) -> Examples:
    """Examples from (ts, symbol, prompt, answer, ret) rows, ordered by (ts, symbol)."""
    out = Examples()
    rows.sort(key=lambda r: (r[0], r[1]))
    for t, s, p, ans, ret in rows:
        out.ts.append(t)
        out.symbol.append(s)
        out.prompt.append(p)
        out.answer.append(ans)
        out.ret.append(ret)
    return out


def store_examples(store, tokenizer, start=None, end=None, cfg: PromptConfig | None = None,
                   train_end=None, text: bool = True) -> Examples:
    """Prompts from a store; with `train_end`, labelled rows only, labels known by train_end.

    Bars are read up to `end` (and `train_end`) only, texts are aligned to their visible session.
    """
    from quantlm.data.store import Store
    from quantlm.features.targets import TargetConfig, make_targets
    from quantlm.finetune.data import market_bars

    store = store if isinstance(store, Store) else Store(store)
    last = min([pd.Timestamp(x) for x in (end, train_end) if x is not None], default=None)
    bars, market = market_bars(store, end=last)
    labels = returns = None
    if train_end is not None:
        tg = make_targets(bars, TargetConfig(horizons=[1]), market=market)
        labels = tg["direction"].reset_index(drop=True)
        returns = tg["ret_1"].reset_index(drop=True)
    texts = _visible_texts(store, bars["symbol"].unique(), market) if text else {}
    return examples_from_frames(tokenizer, bars, texts, start=start, end=last, cfg=cfg, labels=labels,
                                need_label=train_end is not None, returns=returns)


def examples_from_jsonl(path, tokenizer, cfg: PromptConfig | None = None) -> Examples:
    """Prompts from `quantlm finetune export` JSON Lines (validated by `finetune.jsonl.read_jsonl`, whose
    errors name the file, line and field): each line's bars (its last `window_bars`) and text, its
    signal as the answer (plus returns["1"] in bp with cfg.answer_return). Ordered by (ts, symbol)."""
    from quantlm.finetune.jsonl import read_jsonl

    cfg = cfg or PromptConfig()
    data = read_jsonl(path)
    ret1 = data.returns.get(1)
    rows = []
    for i in range(len(data)):
        lines = bar_lines(data.example_bars(i), cfg.volume_bars)
        answer = answer_text(data.signal[i], ret1[i] if ret1 is not None else None, cfg.answer_return)
        ret = float(ret1[i]) if ret1 is not None and np.isfinite(ret1[i]) else None
        rows.append((data.ts[i], str(data.symbol[i]), build_prompt(tokenizer, lines, data.text[i], cfg), answer, ret))
    return _collect(rows)
