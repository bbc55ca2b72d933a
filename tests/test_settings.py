"""Settings from flags and env vars: the model's dtype (STUDIO_DTYPE, --dtype)."""

from __future__ import annotations

import pytest

from studio.errors import ValidationError
from studio.settings import Settings, parse_dtype


def test_dtype_names_and_aliases():
    assert parse_dtype(None) is None and parse_dtype(" ") is None
    for text, name in [("bf16", "bfloat16"), ("BFloat16", "bfloat16"), ("torch.float16", "float16"),
                       ("fp16", "float16"), ("fp32", "float32"), ("float32", "float32")]:  # fmt: skip
        assert parse_dtype(text) == name


def test_dtype_comes_from_the_env_and_flags_win():
    assert Settings.from_env({}).dtype is None  # the default: bf16 on a GPU, float32 on the CPU
    assert Settings.from_env({"STUDIO_DTYPE": "bf16"}).dtype == "bfloat16"
    assert Settings.from_env({"STUDIO_DTYPE": "bf16"}, dtype="fp32").dtype == "float32"
    assert Settings().with_(dtype="half").dtype == "float16"


def test_an_unknown_dtype_is_a_sentence():
    with pytest.raises(ValidationError, match=r"Unknown dtype 'fp64': choose float32, bfloat16 or float16"):
        Settings.from_env({"STUDIO_DTYPE": "fp64"})
