"""The run as musubi-tuner and diffusion-pipe configuration files, read back with tomllib."""

from __future__ import annotations

import pytest
from trainkit import base_options, write_clip, write_image

from studio.errors import ValidationError
from studio.training.configs import to_toml, write_configs
from studio.training.dataset import check_dataset
from studio.training.options import resolve

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


@pytest.fixture()
def dataset(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder, "a.mp4", "a red wave")
    write_clip(folder, "nocap.mp4", None)
    write_image(folder, "still.png", "a still")
    return check_dataset(folder, frames=9, width=32, height=32, fps=8, trigger="zqx")


def options(**changes):
    return resolve(base_options(trigger="zqx", **changes), boundary=0.9, shift=5.0)


def read(path):
    return tomllib.loads(path.read_text())


def test_toml_writer_round_trips():
    data = {"a": 1, "b": 2.5, "c": "q\"uote\\", "d": [1, 2], "e": True, "t": {"x": "y", "n": None},
            "arr": [{"p": "1"}, {"p": "2"}], "inline": [{"name": "v", "config": "c"}, 3]}  # fmt: skip
    back = tomllib.loads(to_toml(data, "a header\nline two"))
    assert back == {**{k: v for k, v in data.items() if k != "t"}, "t": {"x": "y"}}


def test_musubi_both_experts_in_one_run(tmp_path, dataset):
    out = tmp_path / "musubi"
    written = write_configs("musubi", options(sample_every=10), dataset, out)
    names = sorted(p.name for p in written)
    assert names == ["README.txt", "dataset.toml", "sample_prompts.txt", "wave.toml"]
    ds = read(out / "dataset.toml")
    assert ds["general"] == {"resolution": [32, 32], "caption_extension": ".txt", "batch_size": 1,
                             "enable_bucket": True, "bucket_no_upscale": False}  # fmt: skip
    video, image = ds["datasets"]
    assert video["video_directory"] == str(out / "dataset") and video["target_frames"] == [9]
    assert video["frame_extraction"] == "head" and video["cache_directory"].startswith(str(out))
    assert image["image_directory"] == str(out / "dataset")
    # The prepared copy holds the usable items with the captions the studio trains on.
    assert sorted(p.name for p in (out / "dataset").iterdir()) == ["a.mp4", "a.txt", "still.png", "still.txt"]
    assert (out / "dataset" / "a.txt").read_text() == "zqx, a red wave"
    cfg = read(out / "wave.toml")
    model = cfg["model"]
    assert model["task"] == "i2v-A14B" and model["timestep_boundary"] == 0.9
    assert "low_noise" in model["dit"] and "high_noise" in model["dit_high_noise"]
    assert cfg["network"] == {"network_module": "networks.lora_wan", "network_dim": 8, "network_alpha": 8.0}
    training = cfg["training"]
    assert training["max_train_steps"] == 80 and training["learning_rate"] == 0.02
    assert training["timestep_sampling"] == "shift" and training["discrete_flow_shift"] == 5.0
    assert cfg["saving"] == {
        "output_dir": str(out / "output"),
        "output_name": "wave",
        "save_every_n_steps": 40,
    }
    assert cfg["sampling"]["sample_every_n_steps"] == 20
    prompt = (out / "sample_prompts.txt").read_text()
    assert prompt.startswith("zqx, a red wave --w 32 --h 32 --f 9") and (out / "sample_start.png").is_file()


def test_musubi_one_expert_gets_its_timestep_range(tmp_path, dataset):
    write_configs("musubi", options(experts="high"), dataset, tmp_path)
    model = read(tmp_path / "wave.toml")["model"]
    assert "high_noise" in model["dit"] and "dit_high_noise" not in model and "timestep_boundary" not in model
    assert (model["min_timestep"], model["max_timestep"], model["preserve_distribution_shape"]) == (
        900,
        1000,
        True,
    )
    write_configs("musubi", options(experts="low", target_modules=["self_attn", "ffn"]), dataset, tmp_path)
    cfg = read(tmp_path / "wave.toml")
    assert (cfg["model"]["min_timestep"], cfg["model"]["max_timestep"]) == (0, 900)
    assert cfg["network"]["network_args"] == ["exclude_patterns=[r'.*cross_attn.*']"]


def test_diffusion_pipe_one_config_per_expert(tmp_path, dataset):
    out = tmp_path / "dp"
    written = write_configs("diffusion-pipe", options(), dataset, out)
    assert sorted(p.name for p in written) == [
        "README.txt",
        "dataset.toml",
        "wave_high_noise.toml",
        "wave_low_noise.toml",
    ]
    ds = read(out / "dataset.toml")
    assert (
        ds["resolutions"] == [[32, 32]] and ds["frame_buckets"] == [1, 9] and ds["enable_ar_bucket"] is True
    )
    assert ds["directory"] == [{"path": str(out / "dataset"), "num_repeats": 1}]
    for expert, lo, hi in (("high", 0.9, 1.0), ("low", 0.0, 0.9)):
        cfg = read(out / f"wave_{expert}_noise.toml")
        assert cfg["dataset"] == str(out / "dataset.toml") and cfg["max_steps"] == 40
        assert cfg["model"]["type"] == "wan" and cfg["model"]["transformer_path"].endswith(
            f"{expert}_noise_model"
        )
        assert (cfg["model"]["min_t"], cfg["model"]["max_t"]) == (lo, hi)
        assert cfg["adapter"] == {"type": "lora", "rank": 8, "dtype": "bfloat16"}
        assert cfg["optimizer"]["type"] == "adamw_optimi" and cfg["optimizer"]["lr"] == 0.02
        assert cfg["save_every_n_steps"] == 20 and cfg["activation_checkpointing"] is True


def test_an_unknown_tool_or_an_unusable_dataset_is_refused(tmp_path, dataset):
    with pytest.raises(ValidationError, match="musubi or diffusion-pipe"):
        write_configs("kohya", options(), dataset, tmp_path)
    empty = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8)
    with pytest.raises(ValidationError, match="no usable"):
        write_configs("musubi", options(), empty, tmp_path / "x")
