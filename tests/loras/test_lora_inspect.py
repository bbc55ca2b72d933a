"""Inspection from the header: layout, rank/alpha, base model, expert hint, metadata, sha256 cache."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time

import pytest
import torch

import studio.loras.hashing as hashing
from studio.loras.inspect import LoraInfo, inspect_lora
from studio.loras.names import expert_from_name
from studio.loras.synthetic import (
    WAN_1_3B_CONFIG,
    WAN_5B_CONFIG,
    WAN_14B_CONFIG,
    make_lora_tensors,
    training_metadata,
    write_layout,
    write_lora,
)


@pytest.mark.parametrize(
    ("layout", "options", "expected"),
    [
        ("peft", {}, "diffusers"),
        ("original", {}, "original"),
        ("original", {"naming": "lora_down", "alpha": 2.0}, "original"),
        ("lightx2v", {}, "lightx2v"),
        ("original", {"diff_b": "all"}, "lightx2v"),
        ("musubi", {}, "musubi"),
        ("no_prefix", {}, "no_prefix"),
        ("no_prefix_diffusers", {}, "no_prefix"),
        ("lokr", {}, "lokr"),
        ("loha", {}, "loha"),
        ("dora", {}, "dora"),
        ("i2v", {}, "original"),
    ],
)
def test_layout_detection(tmp_path, config, layout, options, expected):
    path = write_layout(tmp_path / f"{layout}.safetensors", config, layout, **options)
    info = inspect_lora(path, hash_file=False)
    assert info.layout == expected
    assert info.rank == 4
    assert info.ranks == [4]
    assert info.model_dim == 24
    assert info.ffn_dim == 32
    assert info.base_model.startswith("the demo model")
    assert info.num_blocks == 2 and info.max_block == 1
    assert {"self_attn", "cross_attn", "ffn"} <= set(info.module_kinds)
    assert info.dora is (layout == "dora")
    assert info.image_attention is (layout == "i2v")
    assert info.task == ("i2v" if layout == "i2v" else None)
    if layout == "i2v":
        assert "image_cross_attn" in info.module_kinds
    if layout == "lightx2v":
        assert {"head", "norm"} <= set(info.module_kinds)
        assert info.has_diff and info.has_diff_b and not info.diff_b_partial
    assert info.sha256 is None
    assert LoraInfo.model_validate_json(info.model_dump_json()) == info


def test_naming_and_prefix(tmp_path, config):
    musubi = inspect_lora(write_layout(tmp_path / "m.safetensors", config, "musubi"), hash_file=False)
    assert (musubi.naming, musubi.key_prefix) == ("musubi", "lora_unet_")
    bare = inspect_lora(write_layout(tmp_path / "b.safetensors", config, "no_prefix"), hash_file=False)
    assert (bare.naming, bare.key_prefix) == ("original", "")
    bare_d = inspect_lora(
        write_layout(tmp_path / "d.safetensors", config, "no_prefix_diffusers"), hash_file=False
    )
    assert (bare_d.naming, bare_d.key_prefix) == ("diffusers", "")


def test_partial_diff_b_is_flagged(tmp_path, config):
    info = inspect_lora(
        write_layout(tmp_path / "x.safetensors", config, "lightx2v", diff_b="some"), hash_file=False
    )
    assert info.has_diff_b and info.diff_b_partial


def test_rank_and_alpha(tmp_path, config):
    tensors = make_lora_tensors(config, layout="original", rank=8, alpha=4.0, modules=["attn1.to_q"])
    tensors.update(make_lora_tensors(config, layout="original", rank=16, alpha=16.0, modules=["ffn.net.2"]))
    tensors.update(make_lora_tensors(config, layout="original", rank=8, alpha=4.0, modules=["attn2.to_k"]))
    info = inspect_lora(write_lora(tmp_path / "r.safetensors", tensors), hash_file=False)
    assert info.rank == 8 and info.ranks == [8, 16]
    assert info.alpha == 4.0 and info.alphas == [4.0, 16.0]
    musubi = inspect_lora(
        write_layout(tmp_path / "m.safetensors", config, "musubi", rank=2, alpha=1.0), hash_file=False
    )
    assert (musubi.rank, musubi.alpha) == (2, 1.0)


def test_rank_and_alpha_from_kohya_metadata_when_tensors_have_none(tmp_path, config):
    meta = training_metadata(rank=32, alpha=16)
    info = inspect_lora(
        write_layout(tmp_path / "x.safetensors", config, "peft", metadata=meta), hash_file=False
    )
    assert info.rank == 4  # tensors win
    assert info.alpha == 16.0  # metadata fills what tensors lack
    assert info.training["ss_network_dim"] == "32"


@pytest.mark.parametrize(
    ("config_name", "dim", "image_attention", "expected"),
    [
        ("1.3B", 1536, False, "Wan 1.3B"),
        ("5B", 3072, False, "Wan2.2 TI2V 5B"),
        ("14B", 5120, False, "Wan 14B"),
        ("14B", 5120, True, "Wan2.1 I2V 14B"),
    ],
)
def test_base_model_from_shapes(tmp_path, config_name, dim, image_attention, expected):
    cfg = {"1.3B": WAN_1_3B_CONFIG, "5B": WAN_5B_CONFIG, "14B": WAN_14B_CONFIG}[config_name]
    tensors = make_lora_tensors(
        cfg,
        layout="original",
        rank=2,
        blocks=[0, 39 if config_name == "14B" else 29],
        modules=["attn1.to_q", "ffn.net.0.proj", "ffn.net.2"],
        image_attention=image_attention,
    )
    info = inspect_lora(write_lora(tmp_path / "big.safetensors", tensors), hash_file=False)
    assert info.model_dim == dim
    assert info.ffn_dim == cfg["ffn_dim"]
    assert info.base_model == expected
    assert info.image_attention is image_attention
    assert info.task == ("i2v" if image_attention else None)
    assert info.num_blocks == 2 and info.max_block == (39 if config_name == "14B" else 29)


def test_lokr_and_loha_dims(tmp_path):
    for layout in ("lokr", "loha"):
        tensors = make_lora_tensors(
            WAN_14B_CONFIG, layout=layout, rank=4, blocks=[0], modules=["attn1.to_q", "ffn.net.2"]
        )
        info = inspect_lora(write_lora(tmp_path / f"{layout}.safetensors", tensors), hash_file=False)
        assert info.layout == layout and info.model_dim == 5120 and info.base_model == "Wan 14B"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("wan22_i2v_high_noise_style", "high"),
        ("wan22_i2v_low_noise_style", "low"),
        ("WanHighNoise_v2", "high"),
        ("WanLowNoise_v2", "low"),
        ("Wan2.2-Lightning_I2V-A14B-4steps-lora_HIGH_fp16", "high"),
        ("Wan2.2-Lightning_I2V-A14B-4steps-lora_LOW_fp16", "low"),
        ("mylora_H", "high"),
        ("mylora_L", "low"),
        ("style-high", "high"),
        ("style_lownoise", "low"),
        ("highres_detail", None),
        ("slow_motion", None),
        ("follow_cam", None),
        ("Flow_shift", None),
        ("high_to_low", None),
        ("Lightning_4step", None),
        ("style", None),
    ],
)
def test_expert_hint_from_file_name(name, expected):
    assert expert_from_name(name) == expected


def test_expert_hint_in_inspection(tmp_path, config):
    info = inspect_lora(
        write_layout(tmp_path / "dance_HighNoise.safetensors", config, "peft"), hash_file=False
    )
    assert (info.expert_hint, info.expert_hint_source) == ("high", "file name")
    assert info.pair_file is None

    write_layout(tmp_path / "dance_LowNoise.safetensors", config, "peft")
    info = inspect_lora(tmp_path / "dance_HighNoise.safetensors", hash_file=False)
    assert info.pair_file == "dance_LowNoise.safetensors"

    # "_H_" in the middle of a name only counts when the partner file exists
    lone = inspect_lora(write_layout(tmp_path / "walk_H_v1.safetensors", config, "peft"), hash_file=False)
    assert lone.expert_hint is None
    write_layout(tmp_path / "walk_L_v1.safetensors", config, "peft")
    paired = inspect_lora(tmp_path / "walk_L_v1.safetensors", hash_file=False)
    assert (paired.expert_hint, paired.expert_hint_source, paired.pair_file) == (
        "low",
        "sibling file",
        "walk_H_v1.safetensors",
    )

    # "run" next to "run_low" is the high half
    write_layout(tmp_path / "run.safetensors", config, "peft")
    write_layout(tmp_path / "run_low.safetensors", config, "peft")
    info = inspect_lora(tmp_path / "run.safetensors", hash_file=False)
    assert (info.expert_hint, info.expert_hint_source) == ("high", "sibling file")


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (training_metadata(output_name="spin_high_noise"), "high"),
        (training_metadata(title="Spin LOW"), "low"),
        ({"ss_dit": "/models/wan2.2_i2v_low_noise_14B_fp16.safetensors"}, "low"),
        (training_metadata(min_timestep=875, max_timestep=1000), "high"),
        (training_metadata(min_timestep=0, max_timestep=875), "low"),
        (training_metadata(min_timestep=0, max_timestep=1000), None),
    ],
)
def test_expert_hint_from_metadata(tmp_path, config, meta, expected):
    info = inspect_lora(
        write_layout(tmp_path / "spin.safetensors", config, "peft", metadata=meta), hash_file=False
    )
    assert info.expert_hint == expected
    assert info.expert_hint_source == ("metadata" if expected else None)


def test_trigger_words_and_training_metadata(tmp_path, config):
    meta = training_metadata(
        title="Spinning dancer",
        output_name="spin_v3",
        trigger_phrase="sks dancer, spinning",
        tags={"sks dancer": 40, "spinning": 35, "red dress": 12},
        rank=4,
        alpha=2,
        base_model="wan2.2_i2v_a14b",
    )
    info = inspect_lora(
        write_layout(tmp_path / "spin.safetensors", config, "peft", metadata=meta), hash_file=False
    )
    assert info.title == "Spinning dancer"
    assert info.trigger_words == ["sks dancer", "spinning"]
    assert info.tags == ["sks dancer", "spinning", "red dress"]
    assert info.training["ss_output_name"] == "spin_v3"
    assert info.training["ss_base_model_version"] == "wan2.2_i2v_a14b"
    assert info.training["modelspec.trigger_phrase"] == "sks dancer, spinning"

    only_tags = training_metadata(tags={"ohwx": 9, "cat": 20, "garden": 3, "sun": 1})
    info = inspect_lora(
        write_layout(tmp_path / "cat.safetensors", config, "peft", metadata=only_tags), hash_file=False
    )
    assert info.trigger_words == ["cat", "ohwx", "garden"]  # most frequent tags when no trigger is given
    assert info.title is None

    hostile = {
        "ss_tag_frequency": "{not json",
        "modelspec.trigger_phrase": "x" * 10_000,
        "ss_output_name": "y" * 5000,
    }
    info = inspect_lora(
        write_layout(tmp_path / "odd.safetensors", config, "peft", metadata=hostile), hash_file=False
    )
    assert info.tags == [] and len(info.training["ss_output_name"]) <= 500
    assert all(len(w) <= 100 for w in info.trigger_words)


def test_sha256_is_cached_by_path_size_and_mtime(tmp_path, config, monkeypatch):
    path = write_layout(tmp_path / "style.safetensors", config, "peft")
    cache = tmp_path / "cache"
    calls = []
    real_hash = hashing.hash_file
    monkeypatch.setattr(hashing, "hash_file", lambda p: calls.append(p) or real_hash(p))

    first = inspect_lora(path, cache_dir=cache)
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(calls) == 1
    assert json.loads((cache / hashing.CACHE_FILE_NAME).read_text())["version"] == 1

    again = inspect_lora(path, cache_dir=cache)
    assert again.sha256 == first.sha256 and len(calls) == 1  # not hashed again

    # Change the bytes but keep size and mtime: the cache (rightly keyed on them) answers,
    # which proves the file was not read again.
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    stale = inspect_lora(path, cache_dir=cache)
    assert stale.sha256 == first.sha256 and len(calls) == 1

    # A new mtime invalidates the entry.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fresh = inspect_lora(path, cache_dir=cache)
    assert fresh.sha256 == hashlib.sha256(bytes(data)).hexdigest() != first.sha256
    assert len(calls) == 2

    # A corrupt cache file is treated as empty.
    (cache / hashing.CACHE_FILE_NAME).write_text("{broken")
    assert inspect_lora(path, cache_dir=cache).sha256 == fresh.sha256
    assert len(calls) == 3


def test_inspection_does_not_read_tensor_data(tmp_path):
    """A file with a 4 GiB (sparse) data section inspects in well under a second."""
    big = 1 << 32
    small = 4 * 5120 * 4
    header = {
        "__metadata__": {"ss_output_name": "big"},
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": {
            "dtype": "F32",
            "shape": [4, 5120],
            "data_offsets": [0, small],
        },
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": {
            "dtype": "F32",
            "shape": [5120, 4],
            "data_offsets": [small, 2 * small],
        },
        "diffusion_model.blocks.0.self_attn.q.alpha": {
            "dtype": "F32",
            "shape": [],
            "data_offsets": [2 * small, 2 * small + 4],
        },
        "diffusion_model.blocks.0.ffn.0.lora_down.weight": {
            "dtype": "F32",
            "shape": [big // 4 // 5120 // 4 * 4, 5120],
            "data_offsets": [2 * small + 4, 0],
        },
    }
    n_rows = header["diffusion_model.blocks.0.ffn.0.lora_down.weight"]["shape"][0]
    end = 2 * small + 4 + n_rows * 5120 * 4
    header["diffusion_model.blocks.0.ffn.0.lora_down.weight"]["data_offsets"][1] = end
    raw = json.dumps(header).encode()
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.seek(8 + len(raw) + 2 * small)
        f.write(struct.pack("<f", 8.0))
        f.truncate(8 + len(raw) + end)
    start = time.perf_counter()
    info = inspect_lora(path, hash_file=False)
    assert time.perf_counter() - start < 0.5
    assert info.file_size > 4 * 10**9
    assert info.model_dim == 5120 and info.alpha == 8.0 and info.layout == "original"


def test_unknown_file_is_reported_not_crashed(tmp_path):
    path = write_lora(
        tmp_path / "sd15.safetensors",
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4)},
    )
    info = inspect_lora(path, hash_file=False)
    assert info.layout == "unknown"
    assert info.unknown_keys == 1 and info.notes
