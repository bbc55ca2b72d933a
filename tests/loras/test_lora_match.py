"""prepare_lora + match report against the demo model; loading through diffusers gives exact deltas."""

from __future__ import annotations

import hashlib
import itertools
import logging

import pytest
import torch
from safetensors.torch import load_file

from studio.errors import LoraFileError
from studio.loras.convert import to_diffusers_state_dict
from studio.loras.match import MatchReport, match_report, prepare_lora
from studio.loras.synthetic import (
    WAN_1_3B_CONFIG,
    WAN_14B_CONFIG,
    make_lora_tensors,
    write_layout,
    write_lora,
)

_names = (f"lora{i}" for i in itertools.count())

CHECKED = ["blocks.0.attn1.to_q", "blocks.1.attn2.to_k", "blocks.0.ffn.net.0.proj", "blocks.1.ffn.net.2"]

LAYOUTS = [
    ("peft", {}),
    ("original", {}),
    ("original", {"naming": "lora_down", "alpha": 8.0}),
    ("lightx2v", {}),
    ("lightx2v", {"alpha": 2.0, "head_diff_b": False}),
    ("musubi", {"alpha": 2.0}),
    ("musubi", {"alpha": 2.0, "blocks": [1]}),
    ("no_prefix", {}),
    ("no_prefix_diffusers", {}),
    ("lokr", {"alpha": 3.0}),
    ("lokr", {"lokr_decompose": False}),
    ("loha", {"alpha": 2.0}),
    ("dora", {"alpha": 4.0}),
    ("original", {"top_level": ["proj_out", "condition_embedder.time_proj"], "alpha": 2.0}),
]


@pytest.fixture
def loaded(demo_pipe):
    """Load a prepared LoRA into the demo pipeline; adapters are removed after the test."""
    names: list[str] = []

    def _load(prepared, **kwargs) -> str:
        name = next(_names)
        demo_pipe.load_lora_weights(
            prepared.state_dict, adapter_name=name, **{**prepared.load_kwargs, **kwargs}
        )
        names.append(name)
        return name

    yield _load
    for name in names:
        demo_pipe.delete_adapters(name)


@pytest.mark.parametrize(("layout", "options"), LAYOUTS)
def test_every_layout_lands_exactly(tmp_path, config, demo_pipe, loaded, tools, layout, options):
    path = write_layout(tmp_path / f"{layout}.safetensors", config, layout, scale=0.2, **options)
    raw = load_file(str(path))
    prepared = prepare_lora(path, demo_pipe.transformer)
    assert prepared.report.percent == 100.0
    assert prepared.report.matched_modules == prepared.report.total_modules
    assert prepared.report.skipped == []
    assert prepared.needs_full_load == prepared.info.diff_b_partial == (options.get("head_diff_b") is False)
    name = loaded(prepared)

    blocks = options.get("blocks", [0, 1])
    modules = [m for m in CHECKED if int(m.split(".")[1]) in blocks]
    modules += options.get("top_level", [])
    if layout == "lightx2v":
        modules.append("proj_out")  # head.head.diff
    for module in modules:
        delta, bias = tools.reference_delta(raw, layout, module)
        tools.assert_module_delta(demo_pipe, name, module, delta, bias)


def test_adapter_weight_scales_the_delta(tmp_path, config, demo_pipe, loaded, tools):
    path = write_layout(tmp_path / "w.safetensors", config, "lightx2v", alpha=2.0)
    raw = load_file(str(path))
    name = loaded(prepare_lora(path, demo_pipe.transformer))
    delta, bias = tools.reference_delta(raw, "lightx2v", "blocks.0.attn2.to_v")
    tools.assert_module_delta(demo_pipe, name, "blocks.0.attn2.to_v", delta, bias, weight=0.5)
    tools.assert_module_delta(demo_pipe, name, "blocks.0.attn2.to_v", delta, bias, weight=-1.5)


@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_diff_b_on_some_layers_only(tmp_path, config, demo_pipe, loaded, tools, low_cpu_mem_usage, caplog):
    path = write_layout(tmp_path / "some.safetensors", config, "lightx2v", diff_b="some")
    raw = load_file(str(path))
    prepared = prepare_lora(path, demo_pipe.transformer)
    assert prepared.needs_full_load
    assert prepared.load_kwargs == {"low_cpu_mem_usage": False}
    with caplog.at_level(logging.WARNING):
        name = loaded(prepared, low_cpu_mem_usage=low_cpu_mem_usage)
    assert "missing keys" not in caplog.text
    for module in ["blocks.0.attn1.to_q", "blocks.0.attn1.to_k", "blocks.1.ffn.net.2"]:
        delta, bias = tools.reference_delta(raw, "lightx2v", module)
        layer = demo_pipe.transformer.get_submodule(module)
        assert layer.lora_B[name].bias.device.type == "cpu"
        tools.assert_module_delta(demo_pipe, name, module, delta, bias)
    assert tools.reference_delta(raw, "lightx2v", "blocks.0.attn1.to_k")[1] is None  # really partial


def test_second_expert(tmp_path, config, demo_pipe, loaded, tools):
    path = write_layout(tmp_path / "low.safetensors", config, "original", alpha=2.0)
    raw = load_file(str(path))
    prepared = prepare_lora(path, demo_pipe.transformer_2)
    name = loaded(prepared, load_into_transformer_2=True)
    demo_pipe.transformer_2.set_adapters([name], weights=[1.0])
    layer = demo_pipe.transformer_2.get_submodule("blocks.0.attn1.to_q")
    delta, _ = tools.reference_delta(raw, "original", "blocks.0.attn1.to_q")
    x = torch.randn(3, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            (layer(x) - layer.get_base_layer()(x)).double(), x.double() @ delta.T, atol=2e-5, rtol=1e-4
        )


def test_wan21_i2v_lora_leaves_image_attention_out(tmp_path, config, demo_pipe, loaded, tools, caplog):
    """k_img/v_img have nothing to land on in Wan2.2: leftovers (ignored), so everything else is 100%."""
    path = write_layout(tmp_path / "i2v21.safetensors", config, "i2v")
    raw = load_file(str(path))
    prepared = prepare_lora(path, demo_pipe.transformer)
    report = prepared.report
    assert report.total_modules == 20 and report.matched_modules == 20 and report.percent == 100.0
    assert report.skipped == []
    ignored = {s.key for s in report.ignored}
    assert ignored == {
        f"transformer.blocks.{b}.attn2.{p}.lora_{ab}.weight"
        for b in (0, 1)
        for p in ("add_k_proj", "add_v_proj")
        for ab in "AB"
    }
    assert all(s.kind == "unknown_module" and "image attention" in s.reason for s in report.ignored)
    assert not any("add_k_proj" in k for k in prepared.state_dict)
    assert any("k_img/v_img" in n and "4 module(s)" in n for n in prepared.notes)
    assert not any("do not fit" in n for n in prepared.notes)
    with caplog.at_level(logging.WARNING):
        name = loaded(prepared)
    assert "unexpected" not in caplog.text
    delta, bias = tools.reference_delta(raw, "i2v", "blocks.1.attn2.to_k")
    tools.assert_module_delta(demo_pipe, name, "blocks.1.attn2.to_k", delta, bias)
    assert MatchReport.model_validate_json(report.model_dump_json()) == report


def test_only_image_attention_is_refused_with_its_own_sentence(tmp_path, config, demo_pipe):
    path = write_layout(tmp_path / "img.safetensors", config, "original", modules=[], image_attention=True)
    with pytest.raises(
        LoraFileError, match=r"would change nothing.*only targets Wan2\.1 I2V image attention"
    ):
        prepare_lora(path, demo_pipe.transformer)


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (WAN_14B_CONFIG, ["Wan 14B (dim 5120)", "dim 24"]),
        (WAN_1_3B_CONFIG, ["Wan 1.3B (dim 1536)", "dim 24"]),
    ],
)
def test_lora_for_another_model_size_is_refused(tmp_path, demo_pipe, cfg, words):
    tensors = make_lora_tensors(
        cfg, layout="original", rank=2, blocks=[0, 1], modules=["attn1.to_q", "ffn.net.2"]
    )
    path = write_lora(tmp_path / "big.safetensors", tensors)
    with pytest.raises(LoraFileError) as exc:
        prepare_lora(path, demo_pipe.transformer)
    message = str(exc.value)
    assert message.startswith("big.safetensors would change nothing on this model")
    for word in words:
        assert word in message


def test_match_report_reasons(config, demo_pipe):
    full = to_diffusers_state_dict(make_lora_tensors(config, layout="peft"))[0]
    report = match_report(full, demo_pipe.transformer)
    assert (report.total_modules, report.matched_modules, report.percent) == (20, 20, 100.0)
    assert report.complete and report.model_dim == 24 and report.lora_dim == 24

    big = to_diffusers_state_dict(
        make_lora_tensors(WAN_14B_CONFIG, layout="peft", rank=2, blocks=[1, 39], modules=["attn1.to_q"])
    )[0]
    report = match_report(big, demo_pipe.transformer)
    assert report.matched_modules == 0 and report.lora_dim == 5120
    by_module = {s.module: s for s in report.skipped}
    assert by_module["blocks.39.attn1.to_q"].kind == "unknown_module"
    assert "block 39 does not exist" in by_module["blocks.39.attn1.to_q"].reason
    assert by_module["blocks.1.attn1.to_q"].kind == "shape_mismatch"
    assert "5120→5120" in by_module["blocks.1.attn1.to_q"].reason
    assert "Wan 14B (dim 5120)" in by_module["blocks.1.attn1.to_q"].reason

    odd = dict(full)
    odd["transformer.blocks.0.norm2.lora_A.weight"] = torch.zeros(2, 24)
    odd["transformer.blocks.0.norm2.lora_B.weight"] = torch.zeros(24, 2)
    odd["text_encoder.layers.0.q.lora_A.weight"] = torch.zeros(2, 24)
    report = match_report(odd, demo_pipe.transformer)
    kinds = {s.key: s.kind for s in report.skipped}
    assert kinds["transformer.blocks.0.norm2.lora_A.weight"] == "unsupported_layout"
    assert kinds["text_encoder.layers.0.q.lora_A.weight"] == "unsupported_layout"
    assert report.total_modules == 22 and report.matched_modules == 20


def test_prepare_counts_what_conversion_dropped(tmp_path, config, demo_pipe):
    tensors = make_lora_tensors(config, layout="original")
    tensors["diffusion_model.patch_embedding.lora_A.weight"] = torch.zeros(4, 36, 1, 2, 2)
    tensors["diffusion_model.patch_embedding.lora_B.weight"] = torch.zeros(24, 4, 1, 1, 1)
    prepared = prepare_lora(write_lora(tmp_path / "p.safetensors", tensors), demo_pipe.transformer)
    assert (prepared.report.total_modules, prepared.report.matched_modules) == (21, 20)
    assert {s.kind for s in prepared.report.skipped} == {"unsupported_layout"}
    lightx2v = prepare_lora(
        write_layout(tmp_path / "l.safetensors", config, "lightx2v"), demo_pipe.transformer
    )
    assert lightx2v.report.percent == 100.0 and len(lightx2v.report.ignored) == 12  # norm diffs


def test_prepare_refuses_files_that_are_not_wan_loras(tmp_path, demo_pipe):
    path = write_lora(
        tmp_path / "sd.safetensors",
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4)},
    )
    with pytest.raises(LoraFileError, match="does not look like a Wan LoRA"):
        prepare_lora(path, demo_pipe.transformer)
    bad = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.full((2, 24), float("nan")),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 2),
    }
    with pytest.raises(LoraFileError, match="NaN"):
        prepare_lora(write_lora(tmp_path / "nan.safetensors", bad), demo_pipe.transformer)


def test_prepare_hashes_while_reading_and_uses_the_cache(tmp_path, config, demo_pipe, monkeypatch):
    import studio.loras.hashing as hashing

    path = write_layout(tmp_path / "c.safetensors", config, "peft")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(hashing, "hash_file", lambda p: pytest.fail("hashed the file a second time"))
    prepared = prepare_lora(path, demo_pipe.transformer, cache_dir=tmp_path / "cache")
    assert prepared.info.sha256 == digest
    assert hashing.file_sha256(path, cache_dir=tmp_path / "cache") == digest  # served from the cache
    assert prepare_lora(path, demo_pipe.transformer, hash_file=False).info.sha256 is None


def test_peft_dora_magnitude_is_applied(tmp_path, config, demo_pipe, loaded):
    tensors = make_lora_tensors(config, layout="peft", blocks=[0], modules=["attn1.to_q"], scale=0.3)
    magnitude = torch.rand(24, generator=torch.Generator().manual_seed(3)) + 0.5
    tensors["transformer.blocks.0.attn1.to_q.lora_magnitude_vector"] = magnitude
    prepared = prepare_lora(write_lora(tmp_path / "dora_peft.safetensors", tensors), demo_pipe.transformer)
    assert prepared.info.layout == "dora" and prepared.report.percent == 100.0
    name = loaded(prepared)
    demo_pipe.transformer.set_adapters([name], weights=[1.0])
    layer = demo_pipe.transformer.get_submodule("blocks.0.attn1.to_q")
    base = layer.get_base_layer()
    a = tensors["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    b = tensors["transformer.blocks.0.attn1.to_q.lora_B.weight"]
    merged = base.weight.detach() + b @ a
    weight = magnitude[:, None] * merged / merged.norm(dim=1, keepdim=True)
    x = torch.randn(4, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ weight.T + base.bias, atol=1e-5, rtol=1e-4)


def test_degenerate_files_give_sentences_not_crashes(tmp_path, demo_pipe):
    rank0 = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(0, 24),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 0),
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0),
    }
    with pytest.raises(LoraFileError, match="would change nothing"):
        prepare_lora(write_lora(tmp_path / "rank0.safetensors", rank0), demo_pipe.transformer)
    only_alpha = {"diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0)}
    with pytest.raises(LoraFileError, match="would change nothing"):
        prepare_lora(write_lora(tmp_path / "alpha.safetensors", only_alpha), demo_pipe.transformer)
    mismatched = {
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 24),
        "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 3),
    }
    with pytest.raises(LoraFileError, match="would change nothing"):
        prepare_lora(write_lora(tmp_path / "mismatch.safetensors", mismatched), demo_pipe.transformer)
