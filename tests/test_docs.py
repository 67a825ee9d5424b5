"""The examples of docs/api.md run, in order, as the page promises (in a scratch folder)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_api_examples_run_in_order(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", API.read_text(), re.S)
    assert len(blocks) > 20
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md, python block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"docs/api.md python block {i} raised {exc!r}:\n{block}")
    written = sorted(os.listdir(tmp_path))
    assert "modules.json" in written and "modules.graphml" in written and "modules.png" in written
