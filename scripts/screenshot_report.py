"""Render an HTML report to a PNG with headless Chromium (for CI checks and eyeballing).

Usage: python scripts/screenshot_report.py REPORT.html OUT.png [--width 1400] [--height 3000]

Exits 3 with a message when no Chromium binary is found (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of the first Chromium-like browser on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(report: Path, out: Path, width: int = 1400, height: int = 3000, timeout_s: float = 120.0) -> Path:
    """Screenshot `report` (an HTML file) into `out` (PNG) with headless Chromium; returns `out`."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found on PATH (install it, e.g. 'apt-get install chromium')")
    report, out = Path(report).resolve(), Path(out).resolve()
    if not report.exists():
        raise FileNotFoundError(f"report not found: {report}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantlm-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", "--virtual-time-budget=10000", report.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.report, args.out, args.width, args.height)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
