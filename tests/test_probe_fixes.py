"""Hostile inputs to the control channel, queues and command line: each gets a message, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifartui.cli import main
from tests.sweep_helpers import fake_sweep


@pytest.mark.parametrize("field", ["epochs", "attempts", "nodes_lost"])
def test_an_infinite_number_in_a_sweep_entry_is_named_not_a_traceback(
        tmp_path: Path, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    # JSON readers take 1e999 as infinity, which int() cannot convert (OverflowError, not ValueError).
    sweep_dir = fake_sweep(tmp_path, "20260101-120000-sweep-tiny", values=(0.02,), seeds=(0,))
    entry_path = sweep_dir / "001" / "entry.json"
    entry = json.loads(entry_path.read_text())
    entry[field] = "INFINITY"
    entry_path.write_text(json.dumps(entry).replace('"INFINITY"', "1e999"))

    assert main(["sweep", "--resume", str(sweep_dir), "--device", "cpu"]) == 2
    assert f"{entry_path}: damaged" in capsys.readouterr().err

    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert f"{entry_path}: damaged" in capsys.readouterr().err
