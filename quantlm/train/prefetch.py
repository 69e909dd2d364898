"""Input path of the training core: batches built ahead in a background thread, in a fixed order.

    for batch in Prefetcher(make_batch, indices, device, depth=2): ...

- `make_batch(i)` builds micro-batch i on the host (numpy arrays or CPU tensors). It must be a
  pure function of i that uses its own generator (e.g. `np.random.default_rng([seed, i])`), never
  torch's global RNG, which the training thread's dropout shares. The order of the batches is the
  order of `indices`, whatever the thread's timing, so a run and its resume see the same data.
- One worker thread fills a bounded queue (`depth` batches): numpy -> torch, calendar ids narrowed
  to the smallest integer dtype that holds them (`compact_ints`: int8 for weekday / slot ids, int16
  for 1-minute slots; the model's embedding converts them back to int64 on the device), then pinned
  when the target is CUDA. The training thread moves each batch with `.to(device, non_blocking=True)`,
  so the copy overlaps the previous step's kernels.
- An exception in `make_batch` is re-raised in the training thread at that batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

COMPACT_KEYS = ("calendar_ids",)


def compact_ints(x: torch.Tensor) -> torch.Tensor:
    """An integer tensor in the smallest signed dtype (int8 / int16 / int32) that holds all its values."""
    if x.dtype in (torch.int8, torch.bool) or x.is_floating_point() or x.numel() == 0:
        return x
    lo, hi = int(x.min()), int(x.max())
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return x.to(dtype)
    return x


def host_batch(batch: dict[str, Any], pin: bool = False) -> dict[str, Any]:
    """numpy arrays -> torch tensors, COMPACT_KEYS narrowed, optionally pinned; other values kept as they are."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            if k in COMPACT_KEYS:
                v = compact_ints(v)
            if pin:
                v = v.pin_memory()
        out[k] = v
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors moved with non_blocking=True (a real overlap only from pinned memory to CUDA)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


_DONE = object()


class Prefetcher:
    """Iterate device batches make_batch(i) for i in `indices`, built `depth` ahead in one thread."""

    def __init__(self, make_batch: Callable[[int], dict[str, Any]], indices: Iterable[int],
                 device: torch.device | str, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        self._make, self._indices = make_batch, list(indices)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="quantlm-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for i in self._indices:
                if not self._put((i, host_batch(self._make(i), self._pin))):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            self._put((None, e))
            return
        self._put((None, _DONE))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            i, item = self._queue.get()
            if item is _DONE:
                return
            if i is None:
                raise item
            yield to_device(item, self.device)

    def close(self) -> None:
        """Stop the worker (it exits at its next put) and wait for it."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
