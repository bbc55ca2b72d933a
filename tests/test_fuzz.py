"""Fuzzing our readers: random and mutated safetensors files and preset JSON.

Every input must either parse or raise the studio's own error type, never crash, hang
or allocate without bound. Hypothesis drives it; the case counts are printed in the
closing summary (see ``FUZZ_CASES``).
"""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.errors import StudioError
from studio.loras.inspect import inspect_lora
from studio.loras.safetensors_io import load_state_dict, read_header
from studio.workflows.presets.schema import parse_preset

FUZZ_CASES = 300
FUZZ = settings(
    max_examples=FUZZ_CASES, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def valid_file_bytes(tmp_path_factory) -> bytes:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("fuzz") / "seed.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 24),
            "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(24, 4),
            "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0),
        },
        str(path),
        metadata={"ss_network_dim": "4", "modelspec.trigger_phrase": "x"},
    )
    return path.read_bytes()


def _read_everything(path) -> None:
    """All three readers on one file: each returns or raises StudioError."""
    for reader in (read_header, lambda p: inspect_lora(p, hash_file=False), load_state_dict):
        with contextlib.suppress(StudioError):
            reader(path)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("r") / "random.safetensors"
    path.write_bytes(data)
    _read_everything(path)


@FUZZ
@given(
    header=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
        ),
        max_leaves=30,
    ),
    body=st.binary(max_size=512),
)
def test_random_json_headers(tmp_path_factory, header, body):
    raw = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("j") / "header.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    _read_everything(path)


@FUZZ
@given(data=st.data())
def test_mutated_valid_files(tmp_path_factory, valid_file_bytes, data):
    blob = bytearray(valid_file_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path_factory.mktemp("m") / "mutated.safetensors"
    path.write_bytes(bytes(blob))
    _read_everything(path)


@FUZZ
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "kind": st.sampled_from(["wan-lora-studio/preset", "x", 3]),
            "version": st.sampled_from([1, 2, 3, "2", None]),
            "name": st.text(max_size=30) | st.integers(),
            "entries": st.lists(
                st.dictionaries(
                    st.sampled_from(
                        ["name", "high", "low", "weight_high", "weight_low", "enabled", "role", "x"]
                    ),
                    st.none()
                    | st.floats()
                    | st.text(max_size=40)
                    | st.dictionaries(
                        st.sampled_from(["path", "repo", "file", "revision", "sha256"]), st.text(max_size=40)
                    ),
                    max_size=6,
                ),
                max_size=4,
            ),
            "settings": st.dictionaries(
                st.text(max_size=12), st.integers() | st.floats() | st.text(max_size=8)
            ),
        },
    )
)
def test_random_preset_documents(doc):
    with contextlib.suppress(StudioError):
        parse_preset(doc)


@FUZZ
@given(text=st.text(max_size=400))
def test_random_preset_text(text):
    with contextlib.suppress(StudioError):
        parse_preset(text)
