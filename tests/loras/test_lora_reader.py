"""Safe reading: our own header checks, NaN/Inf refusal, pickle refusal, hostile files."""

from __future__ import annotations

import os
import pickle
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.errors import LoraFileError
from studio.loras.inspect import inspect_lora
from studio.loras.safetensors_io import (
    MAX_HEADER_BYTES,
    TensorInfo,
    load_state_dict,
    read_file,
    read_header,
)


def _good(path: Path) -> Path:
    save_file(
        {
            "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.arange(8, dtype=torch.float32).reshape(
                2, 4
            ),
            "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.ones(3, 2, dtype=torch.bfloat16),
            "flag": torch.tensor([True, False]),
        },
        str(path),
        metadata={"ss_output_name": "good"},
    )
    return path


def _assert_sentence(exc: pytest.ExceptionInfo, *words: str) -> None:
    message = str(exc.value)
    assert message.endswith(".") and len(message) > 40, message
    for word in words:
        assert word.lower() in message.lower(), message


def test_valid_file_round_trip(tmp_path):
    path = _good(tmp_path / "good.safetensors")
    header = read_header(path)
    assert header.metadata == {"ss_output_name": "good"}
    assert header.file_size == path.stat().st_size
    info = header.tensors["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    assert info == TensorInfo(dtype="F32", shape=(2, 4), start=info.start, end=info.start + 32)
    sd = load_state_dict(path)
    assert torch.equal(sd["transformer.blocks.0.attn1.to_q.lora_A.weight"], torch.arange(8.0).reshape(2, 4))
    assert sd["transformer.blocks.0.attn1.to_q.lora_B.weight"].dtype == torch.bfloat16
    assert sd["flag"].tolist() == [True, False]


def test_read_file_hashes_the_bytes_it_reads(tmp_path):
    import hashlib

    path = _good(tmp_path / "good.safetensors")
    loaded = read_file(path, want_sha256=True)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, suffix):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / f"lora{suffix}"
    path.write_bytes(pickle.dumps(Evil()))
    for reader in (load_state_dict, read_header, inspect_lora):
        with pytest.raises(LoraFileError) as exc:
            reader(path)
        _assert_sentence(exc, "pickle", "safetensors", "convert")
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "lora.safetensors"
    path.write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(LoraFileError) as exc:
        load_state_dict(path)
    _assert_sentence(exc, "pickle")
    torch.save({"a": torch.zeros(2)}, tmp_path / "zip.safetensors")
    with pytest.raises(LoraFileError, match="pickle"):
        read_header(tmp_path / "zip.safetensors")
    assert not marker.exists()


def test_a_header_length_with_a_low_byte_of_128_is_not_a_pickle(tmp_path):
    """0x80 opens every pickle, but also the length of a 128 + 256k byte header (a real file's)."""
    from safetensors.torch import save_file

    for pad in range(300):  # find metadata that makes the header length end in 0x80
        path = tmp_path / f"lora{pad}.safetensors"
        save_file({"a.lora_A.weight": torch.zeros(2, 2)}, path, metadata={"note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert list(read_header(path).tensors) == ["a.lora_A.weight"]
    assert torch.equal(load_state_dict(path)["a.lora_A.weight"], torch.zeros(2, 2))


def test_other_suffix_is_refused(tmp_path):
    path = _good(tmp_path / "good.safetensors").rename(tmp_path / "lora.gguf")
    with pytest.raises(LoraFileError) as exc:
        load_state_dict(path)
    _assert_sentence(exc, ".safetensors")


def test_truncated_file(tmp_path):
    path = _good(tmp_path / "lora.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # data section cut off
    with pytest.raises(LoraFileError) as exc:
        load_state_dict(path)
    _assert_sentence(exc, "lora.safetensors", "cut off")
    path.write_bytes(data[:50])  # header cut off
    with pytest.raises(LoraFileError) as exc:
        read_header(path)
    _assert_sentence(exc, "cut off")
    path.write_bytes(data[:5])  # not even the length
    with pytest.raises(LoraFileError) as exc:
        read_header(path)
    _assert_sentence(exc, "5 bytes")
    path.write_bytes(b"")
    with pytest.raises(LoraFileError):
        read_header(path)


def test_oversized_header_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(LoraFileError) as exc:
        read_header(path)
    _assert_sentence(exc, "100 MB")
    path.write_bytes(struct.pack("<Q", 2**64 - 1) + b"{}")
    start = time.perf_counter()
    with pytest.raises(LoraFileError):
        load_state_dict(path)
    assert time.perf_counter() - start < 1.0


def test_header_longer_than_file(tmp_path, tools):
    path = tools.write_raw(tmp_path / "x.safetensors", b"{}", header_len=1000)
    with pytest.raises(LoraFileError) as exc:
        read_header(path)
    _assert_sentence(exc, "1,000", "cut off")


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (b"\xff\xfe not utf8", ["UTF-8"]),
        (b"{not json", ["JSON"]),
        (b"[1, 2, 3]", ["JSON object"]),
        (b"[" * 100_000 + b"]" * 100_000, ["JSON"]),
        ({"__metadata__": {"a": 1}}, ["__metadata__"]),
        ({"__metadata__": "x"}, ["__metadata__"]),
        ({"t": "nope"}, ["'t'"]),
        ({"t": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, ["dtype"]),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, ["shape"]),
        ({"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, ["shape"]),
        ({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, ["shape"]),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, ["data_offsets"]),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, ["outside"]),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, ["outside"]),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 10**12]}}, ["outside"]),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, ["size"]),
        ({"t": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, ["size"]),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            ["overlap"],
        ),
    ],
)
def test_corrupt_headers(tmp_path, tools, header, words):
    path = tools.write_raw(tmp_path / "bad.safetensors", header, b"\0" * 16)
    for reader in (read_header, load_state_dict):
        with pytest.raises(LoraFileError) as exc:
            reader(path)
        _assert_sentence(exc, "bad.safetensors", "not a valid safetensors file", *words)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(torch.float32, float("nan")), (torch.float16, float("inf")), (torch.bfloat16, float("-inf"))],
)
def test_nan_and_inf_tensors_are_refused(tmp_path, dtype, value):
    path = tmp_path / "nan.safetensors"
    bad = torch.full((4, 8), value, dtype=dtype)
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": bad, "ok": torch.zeros(2)}, str(path))
    with pytest.raises(LoraFileError) as exc:
        load_state_dict(path)
    _assert_sentence(exc, "nan.safetensors", "NaN or infinite", "lora_A")


def test_single_nan_in_fp8_is_refused(tmp_path):
    path = tmp_path / "fp8.safetensors"
    t = torch.zeros(16, dtype=torch.float32)
    t[3] = float("nan")
    save_file({"w": t.to(torch.float8_e5m2)}, str(path))
    with pytest.raises(LoraFileError, match="NaN"):
        load_state_dict(path)


def test_missing_file_and_directory_and_fifo(tmp_path):
    with pytest.raises(LoraFileError) as exc:
        load_state_dict(tmp_path / "missing.safetensors")
    _assert_sentence(exc, "does not exist")
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(LoraFileError, match="not a regular file"):
        read_header(folder)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(LoraFileError, match="not a regular file"):
        load_state_dict(fifo)  # must not block waiting for a writer
    assert time.perf_counter() - start < 1.0


def test_unaligned_offsets_still_read_correctly(tmp_path, tools):
    payload = b"\0" + struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = {
        "pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [1, 17]},
    }
    path = tools.write_raw(tmp_path / "odd.safetensors", header, payload)
    sd = load_state_dict(path)
    assert sd["w"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_empty_tensors_are_fine(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_file({"e": torch.zeros(0, 4), "x": torch.ones(2)}, str(path))
    sd = load_state_dict(path)
    assert sd["e"].shape == (0, 4)
    assert sd["x"].tolist() == [1.0, 1.0]
