"""The model registry and model choice (no network: the Hub half is in test_models_hub.py)."""

from __future__ import annotations

import pytest

from studio.errors import ModelError
from studio.models.registry import (
    DEMO,
    REGISTRY,
    default_model_name,
    pipeline_source,
    resolve_model,
    spec_from_folder,
)
from studio.settings import Settings


def test_registry_names_the_real_models_and_the_demo():
    a14b, ti2v = REGISTRY["wan2.2-i2v-a14b"], REGISTRY["wan2.2-ti2v-5b"]
    assert (
        a14b.repo_id == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
        and a14b.experts == 2
        and a14b.boundary_ratio == 0.9
    )
    assert (
        ti2v.repo_id == "Wan-AI/Wan2.2-TI2V-5B-Diffusers" and ti2v.experts == 1 and ti2v.size_multiple == 32
    )
    assert DEMO.is_demo and DEMO.repo_id is None and "random weights" in DEMO.note
    for spec in REGISTRY.values():
        d = spec.defaults
        assert (
            (d.frames - 1) % 4 == 0
            and d.width % spec.size_multiple == 0
            and d.height % spec.size_multiple == 0
        )
        assert d.steps > 0 and d.shift > 0 and d.fps > 0


def test_default_is_demo_without_cuda_or_weights(tmp_path):
    assert default_model_name(Settings(cache_dir=tmp_path)) == "demo"
    assert default_model_name(Settings(model="wan2.2-ti2v-5b")) == "wan2.2-ti2v-5b"


def test_env_chooses_the_model(tmp_path):
    settings = Settings.from_env(
        {"STUDIO_MODEL": "wan2.2-i2v-a14b", "STUDIO_LORA_DIRS": f"{tmp_path}/a:{tmp_path}/b"}
    )
    assert settings.model == "wan2.2-i2v-a14b"
    assert [str(p) for p in settings.lora_dirs][1:] == [f"{tmp_path}/a", f"{tmp_path}/b"]


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelError, match=r"choose one of wan2\.2-i2v-a14b, wan2\.2-ti2v-5b, demo"):
        resolve_model("wan3")


def test_real_model_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"not on this machine \(about 69 GB\).*python -m studio download"):
        pipeline_source(REGISTRY["wan2.2-i2v-a14b"], Settings(cache_dir=tmp_path))


def test_a_pipeline_folder_is_a_model(demo_model_dir):
    spec = resolve_model(str(demo_model_dir))
    assert spec.folder == demo_model_dir and spec.experts == 2 and spec.boundary_ratio == 0.875
    assert spec.is_demo  # the demo marker travels with the folder


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        resolve_model(str(tmp_path))
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(ModelError, match="not a Wan image-to-video pipeline"):
        spec_from_folder(tmp_path)


def test_each_models_defaults_are_valid_render_settings():
    from studio.stack.schema import RenderSettings

    for spec in REGISTRY.values():
        settings = RenderSettings(**spec.defaults.settings_values())
        assert (settings.width, settings.frames, settings.steps) == (
            spec.defaults.width,
            spec.defaults.frames,
            spec.defaults.steps,
        )
