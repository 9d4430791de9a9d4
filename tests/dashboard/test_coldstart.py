"""The shipped cold start (metis/assets/coldstart_marker): its files match the manifest, and the
project's own recipe rebuilds a policy that behaves the same (slow: the SFT takes minutes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import build_coldstart  # noqa: E402

MANIFEST = build_coldstart.ASSET / "manifest.json"
shipped = pytest.mark.skipif(not MANIFEST.exists(), reason="metis/assets/coldstart_marker not built in this checkout")


def test_compare_flags_only_differences_beyond_the_tolerance():
    shipped_b = {"accuracy": 1.0, "unnecessary_tool_rate": 0.9}
    assert build_coldstart.compare({"accuracy": 0.9375, "unnecessary_tool_rate": 1.0}, shipped_b, 0.125) == []
    diffs = build_coldstart.compare({"accuracy": 0.5}, shipped_b, 0.125)
    assert len(diffs) == 2 and diffs[0].startswith("accuracy: shipped 1.000, rebuilt 0.500")


@shipped
def test_shipped_files_match_the_manifest():
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["recipe"].startswith("python -m metis.train experiment=coldstart_marker")
    assert manifest["commit"] and manifest["files"]
    for name, meta in manifest["files"].items():
        assert build_coldstart.sha256(build_coldstart.ASSET / name) == meta["sha256"], name
    b = manifest["behaviour"]
    assert b["unnecessary_tool_rate"] >= 0.8, "the cold start must be trigger-happy"
    assert b["accuracy_tool_needed"] >= 0.8


@shipped
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_recipe_rebuilds_a_cold_start_that_behaves_the_same():
    assert build_coldstart.main(["--check"]) == 0
