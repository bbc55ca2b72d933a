import json

import torch
from diffusers import WanImageToVideoPipeline

from studio.models.demo import BOUNDARY_RATIO, TRANSFORMER_CONFIG, build_demo_pipeline, ensure_demo_model


def test_demo_model_saves_in_diffusers_layout_and_loads_back(demo_model_dir):
    index = json.loads((demo_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    for part in ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (demo_model_dir / part).is_dir()
    pipe = WanImageToVideoPipeline.from_pretrained(demo_model_dir)
    assert pipe.config.boundary_ratio == BOUNDARY_RATIO
    config = pipe.transformer.config
    assert config.in_channels == 36 and config.num_layers == TRANSFORMER_CONFIG["num_layers"]
    assert pipe.transformer_2 is not None


def test_demo_model_is_the_same_everywhere(tmp_path, demo_model_dir):
    a, b = build_demo_pipeline(), WanImageToVideoPipeline.from_pretrained(demo_model_dir)
    for (name, p), (_, q) in zip(
        a.transformer.state_dict().items(), b.transformer.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_ensure_is_idempotent_and_rebuilds_a_broken_folder(tmp_path):
    folder = ensure_demo_model(tmp_path)
    mtime = (folder / "model_index.json").stat().st_mtime_ns
    assert ensure_demo_model(tmp_path) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == mtime
    (folder / "studio_demo.json").unlink()  # e.g. a crash before the marker was written
    assert ensure_demo_model(tmp_path) == folder and (folder / "studio_demo.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo-build-")]
