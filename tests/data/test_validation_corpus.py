"""The malformed-data corpus: every bad file is refused through the CLI with a precise message and
the store is left byte-for-byte as it was.

`tests/data/malformed/expected.csv` lists, per case: the path (file or folder) under malformed/,
extra CLI arguments, a fragment of the expected problem, the 1-based data row and the column the
message must name (blank = not applicable), and the file name the message must mention.
`*.parquet` cases are built by the test from the CSV of the same stem (numeric columns typed).
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data.store import Store

CORPUS = Path(__file__).parent / "malformed"
CASES = pd.read_csv(CORPUS / "expected.csv", dtype="str", keep_default_na=False).to_dict("records")


def snapshot(root: Path) -> tuple[dict[str, str], list[tuple]]:
    """Every file under the store with its sha256, plus the catalog listing."""
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    listing = [tuple(r) for r in Store(root).listing().itertuples(index=False)]
    return files, listing


def flat(text: str) -> str:
    """Output without whitespace: rich wraps long lines wherever it likes."""
    return "".join(text.split())


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory) -> Path:
    """A store that already holds data, so that 'unchanged' means something."""
    root = tmp_path_factory.mktemp("corpus") / "store"
    result = CliRunner().invoke(app, ["data", "import", str(CORPUS / "good.csv"), "--store", str(root),
                                      "--market", "cn", "--symbol", "600000.SH"])
    assert result.exit_code == 0, result.output
    return root


def case_path(case: dict, tmp_path: Path) -> Path:
    path = CORPUS / case["path"]
    if path.suffix == ".parquet":  # built from the CSV twin with real dtypes
        df = pd.read_csv(path.with_suffix(".csv"))
        df["date"] = pd.to_datetime(df["date"])
        path = tmp_path / case["path"]
        df.to_parquet(path)
    return path


def test_corpus_is_big_enough():
    files = [p for p in CORPUS.rglob("*") if p.is_file() and p.name != "expected.csv"]
    assert len(files) >= 24
    listed = {c["path"] for c in CASES}
    assert all((CORPUS / p).exists() or p.endswith(".parquet") for p in listed)


@pytest.mark.parametrize("case", CASES, ids=[f"{c['path']} {c['args']}".strip() for c in CASES])
def test_malformed_input_is_refused(case, seeded_store, tmp_path):
    args = shlex.split(case["args"])
    if "--market" not in args:
        args += ["--market", "cn"]
    before = snapshot(seeded_store)
    result = CliRunner().invoke(app, ["data", "import", str(case_path(case, tmp_path)), "--store",
                                      str(seeded_store), *args])
    assert result.exit_code == 2, result.output
    err = flat(result.stderr)
    assert flat(case["problem"]) in err, result.stderr
    if case["row"]:
        assert flat(f"row {case['row']},") in err, result.stderr
    if case["column"]:
        assert flat(f"column '{case['column']}'") in err, result.stderr
    if case["file_named"]:
        assert case["file_named"] in err, result.stderr
    assert snapshot(seeded_store) == before


def test_bad_last_file_leaves_store_unchanged(seeded_store, tmp_path):
    """Three files: two good new symbols, then a bad one: nothing of the first two is written."""
    good = pd.read_csv(CORPUS / "good.csv")
    for name in ("b_ok.csv", "c_ok.csv"):
        good.to_csv(tmp_path / name, index=False)
    (tmp_path / "z_bad.csv").write_bytes((CORPUS / "negative_volume.csv").read_bytes())
    before = snapshot(seeded_store)
    result = CliRunner().invoke(app, ["data", "import", str(tmp_path), "--store", str(seeded_store), "--market", "cn"])
    assert result.exit_code == 2
    assert "z_bad.csv" in flat(result.stderr)
    assert snapshot(seeded_store) == before
    assert Store(seeded_store).symbols() == ["600000.SH"]


def test_conflict_in_last_file_leaves_store_unchanged(seeded_store, tmp_path):
    """The last file disagrees with stored bars (found inside the write transaction): nothing lands."""
    good = pd.read_csv(CORPUS / "good.csv")
    good.to_csv(tmp_path / "a_new.csv", index=False)
    changed = good.assign(symbol="600000.SH")
    changed.loc[2, "close"] = 10.35
    changed.to_csv(tmp_path / "b_conflict.csv", index=False)
    files_before, listing_before = snapshot(seeded_store)
    result = CliRunner().invoke(app, ["data", "import", str(tmp_path), "--store", str(seeded_store), "--market", "cn"])
    assert result.exit_code == 2
    err = flat(result.stderr)
    assert "b_conflict.csv,row3,column'close'" in err and "disagreeswiththestoredbar" in err and "--replace" in err
    files_after, listing_after = snapshot(seeded_store)
    assert listing_after == listing_before
    parquet = {k: v for k, v in files_before.items() if k.endswith(".parquet")}
    assert {k: v for k, v in files_after.items() if k.endswith(".parquet")} == parquet
    assert Store(seeded_store).symbols() == ["600000.SH"]


def test_cell_that_looks_like_markup_is_shown_verbatim(seeded_store):
    result = CliRunner().invoke(app, ["data", "import", str(CORPUS / "markup_in_cell.csv"), "--store",
                                      str(seeded_store), "--market", "cn"])
    assert result.exit_code == 2
    assert "notanumber:'[/b]oops'" in flat(result.stderr)
