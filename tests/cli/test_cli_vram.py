"""``python -m studio vram``: the estimate as a table or JSON, LoRAs read from their headers."""

from __future__ import annotations

import json

import pytest

from studio.cli.main import main
from studio.vram.nvml import gpu_status

A14B = ["--model", "wan2.2-i2v-a14b", "--width", "832", "--height", "480", "--frames", "81"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["vram", *argv])
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_peaks_and_the_breakdown(capsys):
    code, out, _ = run(capsys, *A14B, "--mode", "model-offload", "--gpu-gb", "80", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["peak_vram_bytes"] == sum(data["breakdown"].values())
    assert data["peak_ram_bytes"] == sum(data["ram_breakdown"].values())
    assert data["breakdown"]["expert_high_weights"] > 28e9
    assert data["gpu"]["verdict"] == "fits" and data["gpu"]["bytes"] == 80 * (1 << 30)
    assert data["request"]["mode"] == "model-offload" and data["tokens"] == 32_760


def test_table_with_a_verdict_and_a_suggestion(capsys):
    code, out, _ = run(capsys, *A14B, "--gpu-gb", "24", "--suggest")
    assert code == 0
    assert "Peak VRAM" in out and "won't fit" in out
    assert "high-noise expert weights" in out and "activations (one forward)" in out
    assert "decoding the video" in out  # the phase table
    assert "Suggestion: " in out and "fits 832×480×81" in out


def test_defaults_come_from_the_model(capsys):
    code, out, _ = run(capsys, "--model", "demo", "--gpu-gb", "8", "--json")
    data = json.loads(out)
    assert code == 0 and data["request"]["width"] == 64 and data["request"]["frames"] == 17


def test_loras_are_read_from_their_headers(tmp_path, capsys):
    from studio.loras.synthetic import WAN_14B_CONFIG, write_layout

    high = write_layout(
        tmp_path / "motion_high.safetensors", WAN_14B_CONFIG, "original", rank=16, blocks=range(4)
    )
    both = write_layout(
        tmp_path / "style.safetensors", WAN_14B_CONFIG, "peft", rank=8, modules=["attn1.to_q"]
    )
    code, out, _ = run(
        capsys, *A14B, "--gpu-gb", "48", "--json", "--lora", f"{high}:1:0", "--lora", str(both)
    )
    assert code == 0
    loras = json.loads(out)["request"]["loras"]
    assert [(lr["rank"], lr["experts"], lr["blocks"]) for lr in loras] == [
        (16, ["high"], 4),
        (8, ["high", "low"], 40),
    ]
    assert loras[1]["module_kinds"] == ["self_attn"]
    breakdown = json.loads(out)["breakdown"]
    assert breakdown["lora_weights_high"] > 0
    code, out, _ = run(capsys, *A14B, "--gpu-gb", "48", "--lora", f"{high}:1:0", "--fuse")
    assert code == 0 and "fused" in out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, *A14B[:-2], "--frames", "80")
    assert code == 2 and err.startswith("error: frames must be 4k+1") and err.count("\n") == 1
    code, _, err = run(capsys, *A14B, "--lora", str(tmp_path / "missing.safetensors"))
    assert code == 2 and err.startswith("error: --lora") and "does not exist" in err
    code, _, err = run(capsys, *A14B, "--mode", "cpu")
    assert code == 2 and err.startswith("error: argument --mode") and err.count("\n") == 1
    code, _, err = run(capsys, *A14B, "--gpu-gb", "0")
    assert code == 2 and err.startswith("error: --gpu-gb must be positive")
    code, _, err = run(capsys, "--model", "nope")
    assert code == 2 and err.startswith("error: Unknown model 'nope'")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    code, _, err = run(capsys, *A14B, "--lora", str(bad))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.skipif(gpu_status().available, reason="this machine has an NVIDIA GPU")
def test_without_a_gpu_the_table_says_so(capsys):
    code, out, _ = run(capsys, *A14B)
    assert code == 0 and "no NVIDIA GPU detected" in out and "pass --gpu-gb" in out
    code, out, _ = run(capsys, *A14B, "--json")
    assert json.loads(out)["gpu"]["verdict"] is None


def test_registered_in_the_studio_cli(capsys):
    assert main(["vram", *A14B, "--gpu-gb", "80", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpu"]["verdict"] == "fits"
