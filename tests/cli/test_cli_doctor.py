"""``python -m studio doctor``: the stack doctor on the command line (JSON and tables), on the demo model."""

from __future__ import annotations

import json

import pytest

from studio.cli.main import main
from studio.loras.synthetic import make_lora_tensors, write_lora
from studio.models.demo import TRANSFORMER_CONFIG


@pytest.fixture()
def files(tmp_path, monkeypatch, studio_cache):
    monkeypatch.setenv("STUDIO_CACHE", str(studio_cache))  # the demo model is built there once
    monkeypatch.delenv("STUDIO_LORA_DIRS", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "loras"
    base = make_lora_tensors(dict(TRANSFORMER_CONFIG), seed=1, scale=0.1)

    def scaled(factor):
        return {k: v * factor if "lora_B" in k else v for k, v in base.items()}

    out = {
        "style": write_lora(folder / "style.safetensors", base),
        "anti": write_lora(folder / "anti.safetensors", scaled(-1.0)),
        "big": write_lora(folder / "big.safetensors", scaled(8.0)),
        "other": write_lora(
            folder / "other.safetensors", make_lora_tensors(dict(TRANSFORMER_CONFIG), seed=2)
        ),
    }
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["doctor", *argv])
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_loras_pairs_and_cost(files, capsys):
    code, out, _ = run(
        capsys, "--model", "demo", "--lora", f"{files['style']}", "--lora", f"{files['anti']}:1:0.5",
        "--lora", f"{files['big']}:1:0", "--width", "32", "--height", "32", "--frames", "5", "--json",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert {"loras", "pairs", "cost"} <= set(data)
    for item in data["loras"]:
        assert {"file", "expert", "weight", "relative_effect", "suggested_weight", "flags"} <= set(item)
    for pair in data["pairs"]:
        assert {"a", "b", "expert", "shared_modules", "cosine", "flags"} <= set(pair)
    loras = {(item["file"].rsplit("/", 1)[-1], item["expert"]): item for item in data["loras"]}
    assert set(loras) == {("style.safetensors", e) for e in ("high", "low")} | {
        ("anti.safetensors", "high"),
        ("anti.safetensors", "low"),
        ("big.safetensors", "high"),
    }
    assert loras[("anti.safetensors", "low")]["weight"] == 0.5
    big = loras[("big.safetensors", "high")]
    assert big["flags"] == ["strong"] and big["suggested_weight"] == pytest.approx(0.125, rel=1e-3)
    conflicts = [p for p in data["pairs"] if "conflict" in p["flags"]]
    assert conflicts and all(p["cosine"] == pytest.approx(-1.0, abs=1e-6) for p in conflicts)
    assert data["cost"]["tokens"] == 2 * 2 * 2 and data["cost"]["vram_bytes"] > 0
    assert len(data["cost"]["loras"]) == 3 and data["cost"]["measured"] is None


def test_tables_and_a_clear_error(files, capsys):
    code, out, err = run(
        capsys, "--model", "demo", "--lora", f"{files['style']}", "--lora", f"{files['big']}"
    )
    assert code == 0
    assert "LoRA" in out and "strong" in out and "redundant" in out and "fusing pays off" in out
    assert out.strip().splitlines()[-1].startswith("doctor: ")
    code, _, err = run(capsys, "--model", "demo", "--lora", "missing.safetensors")
    assert code == 2 and err.startswith("error: ") and "does not exist" in err
