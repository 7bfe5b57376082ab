"""The result model: every committed result.json loads through RunResult and round-trips unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.run.result import SCHEMA_VERSION, ResultError, RunResult, Verdict

FIXTURES = sorted(Path(__file__).parent.glob("fixtures/runs/**/result.json"))
SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "result.schema.json").read_text())


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.parent.name)
def test_committed_results_load_and_round_trip(path: Path) -> None:
    raw = json.loads(path.read_text())
    result = RunResult.load(path.parent)
    assert result.verdict in set(Verdict)
    again = result.to_json()
    assert again["schema_version"] == SCHEMA_VERSION  # missing in the fixtures: version 1
    # Every key the file had comes back with the same value (the model drops nothing).
    for key, value in raw.items():
        assert again[key] == value, key
    assert RunResult.from_json(json.loads(json.dumps(again))).to_json() == again


def test_the_schema_names_every_key_the_model_writes() -> None:
    written = set(RunResult().to_json())
    assert written == set(SCHEMA["properties"])
    assert set(SCHEMA["required"]) <= written


def test_a_newer_schema_version_is_refused() -> None:
    with pytest.raises(ResultError, match="schema version 2"):
        RunResult.from_json({"verdict": "pass", "schema_version": 2})
    with pytest.raises(ResultError, match="no 'verdict'"):
        RunResult.from_json({"target": "x"})
