"""app.py: flags reach the settings; a bad flag value stops before anything starts."""

from __future__ import annotations

import pytest

import app


def test_a_bad_dtype_exits_with_one_sentence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--dtype", "fp64", "--model", "demo"])
    assert str(exit_info.value.code).startswith("error: Unknown dtype 'fp64'")
    assert app.parse_args(["--dtype", "bf16"]).dtype == "bf16"
