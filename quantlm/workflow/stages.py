"""Stage caching for `quantlm run`: content keys, atomic stage folders, resume.

A stage's key is sha256 of (stage kind, its resolved config section, its inputs' keys, the store
fingerprint where it reads the store, the workflow version). Its outputs live in
`run_dir/stages/<stage>-<key12>/`, written first into `run_dir/stages/.tmp-<stage>-<key12>/` and renamed
when complete, with `done.json` (stage, key, seconds, finished_at) written last inside the temp folder.

- A stage whose final folder holds done.json (and passes its optional validity check) is skipped
  ("cached"). Same config, same inputs -> same key -> same folder; change a section and that stage
  and every stage whose inputs include its key get new keys, so only they re-run.
- A temp folder left by a crash is discarded before the stage re-runs, except for resumable
  stages (pretraining), which get it back to resume from their checkpoints.
- `--force KIND` re-runs the stages of that kind (e.g. `sft`, `pretrain`; `all` for every stage)
  and every stage downstream of them, replacing their folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

import quantlm

try:
    import fcntl
except ImportError:  # Windows: no stage locks
    fcntl = None

WORKFLOW_FORMAT = 1
VERSION = f"quantlm-{quantlm.__version__}/workflow-{WORKFLOW_FORMAT}"
# Tables left out of the store fingerprint: caches derived from other tables (embeddings are a pure
# function of the texts, and fine-tuning stages may fill them on demand).
FINGERPRINT_SKIP = ("text_embeddings",)


def stage_key(kind: str, config: Any = None, inputs: Iterable[str] = (), store: str | None = None) -> str:
    """sha256 hex of the stage kind, its config (JSON-able), its inputs' keys, the store fingerprint and VERSION."""
    payload = {"kind": kind, "config": config, "inputs": list(inputs), "store": store, "version": VERSION}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def store_fingerprint(store) -> str:
    """sha256 of the store catalog (table, key, file, rows, min/max ts, market per file) and its metadata.

    Every write adds new file names (one per transaction), so any change of bars, texts, oracle or
    reference tables changes it; reading the catalog costs milliseconds. Derived caches
    (FINGERPRINT_SKIP) are left out.
    """
    if not store.exists():
        return stage_key("empty-store")
    cat = store._catalog()
    keep = ~cat["tbl"].astype(str).str.startswith(FINGERPRINT_SKIP)
    rows = cat[keep].astype(str).sort_values(["tbl", "key"]).to_numpy().tolist()
    meta = sorted(store.meta().items())
    return hashlib.sha256(json.dumps({"files": rows, "meta": meta}).encode()).hexdigest()


def dir_name(stage_id: str) -> str:
    """A folder-safe form of a stage id: 'sft[no-text]/s0/f1' -> 'sft@no-text.s0.f1'."""
    return stage_id.replace("[", "@").replace("]", "").replace("/", ".")


@dataclass
class StageResult:
    """A finished stage: its id, key, folder, whether it was cached, and its run time in seconds."""

    id: str
    key: str
    path: Path
    cached: bool
    seconds: float

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "cached": self.cached, "seconds": round(self.seconds, 2)}


class StageCache:
    """Runs stages into `run_dir/stages/`, skipping done ones (see the module docstring)."""

    def __init__(self, run_dir: str | Path, console: Console | None = None, force: Iterable[str] = (),
                 stages_dir: str | Path | None = None) -> None:
        # stages_dir: another folder for the stages (a sweep's variants share one); default run_dir/stages
        self.root = Path(stages_dir) if stages_dir is not None else Path(run_dir) / "stages"
        self.console = console or Console(quiet=True)
        self.force = set(force)
        self.forced_keys: set[str] = set()
        self.results: dict[str, StageResult] = {}

    def folder(self, stage_id: str, key: str) -> Path:
        return self.root / f"{dir_name(stage_id)}-{key[:12]}"

    def _forced(self, stage_id: str, inputs: Iterable[str]) -> bool:
        kind = stage_id.split("/")[0].split("[")[0]
        return "all" in self.force or kind in self.force or any(k in self.forced_keys for k in inputs)

    def run(self, stage_id: str, key: str, build: Callable[[Path], Any], inputs: Iterable[str] = (),
            resumable: bool = False, valid: Callable[[Path], bool] | None = None) -> StageResult:
        """`_run` under an exclusive lock on the stage folder (`stages/.lock-<folder>`, flock; none on
        Windows): runs sharing this cache in other processes or on other nodes (a sweep on Ray) build a
        stage once, and the others find it done when they get the lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".lock-{self.folder(stage_id, key).name}", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            return self._run(stage_id, key, build, inputs, resumable, valid)

    def _run(self, stage_id: str, key: str, build: Callable[[Path], Any], inputs: Iterable[str] = (),
             resumable: bool = False, valid: Callable[[Path], bool] | None = None) -> StageResult:
        """The stage's folder, built by `build(temp_folder)` unless done already.

        inputs: keys of the stages it reads (for --force propagation); resumable: keep a crashed
        run's temp folder for `build` to resume from; valid(final_folder): an extra check that a done
        stage's outputs still hold (e.g. the store still has the data it wrote).
        """
        inputs = list(inputs)
        final = self.folder(stage_id, key)
        forced = self._forced(stage_id, inputs)
        done = (final / "done.json").exists() and (valid is None or valid(final))
        if done and not forced:
            self.console.print(f"[dim]stage {escape(stage_id)}: cached ({escape(final.name)})[/]")
            res = StageResult(stage_id, key, final, True, 0.0)
            self.results[stage_id] = res
            return res
        tmp = self.root / f".tmp-{final.name}"
        if tmp.exists() and not resumable:
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        self.console.print(f"stage {escape(stage_id)}: running ...")
        t0 = time.perf_counter()
        build(tmp)
        seconds = time.perf_counter() - t0
        (tmp / "done.json").write_text(json.dumps(
            {"stage": stage_id, "key": key, "seconds": round(seconds, 2), "version": VERSION,
             "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        if forced:
            self.forced_keys.add(key)
        self.console.print(f"stage {escape(stage_id)}: done in {seconds:.1f} s")
        res = StageResult(stage_id, key, final, False, seconds)
        self.results[stage_id] = res
        return res

    def note(self, stage_id: str, key: str, path: Path) -> StageResult:
        """Record an input that is not built here (e.g. a given pretrained model) as a cached stage."""
        res = StageResult(stage_id, key, Path(path), True, 0.0)
        self.results[stage_id] = res
        return res

    def records(self) -> dict[str, dict[str, Any]]:
        """{stage id: {"key", "cached", "seconds"}} in run order (summary.json's `stages`)."""
        return {sid: r.record() for sid, r in self.results.items()}


def file_stamp(paths: Iterable[str | Path]) -> list[list[Any]]:
    """[(path, size, mtime_ns)] of every file under `paths` (files or folders): cheap change detection."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


__all__ = ["StageCache", "StageResult", "VERSION", "dir_name", "file_stamp", "stage_key", "store_fingerprint"]
