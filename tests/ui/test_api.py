"""The launched app on loopback, driven through its public API with gradio_client."""

from __future__ import annotations

import json
import re
import time

import pytest
from gradio_client import Client, handle_file

from studio.media.probe import probe_video
from studio.service import Studio
from studio.settings import Settings
from studio.stack.schema import Stack, StackEntry


@pytest.fixture(scope="module")
def app_env(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, launch_studio):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("app")
    loras = root / "loras"
    write_lora(loras / "style.safetensors", make_lora_tensors(demo_transformer_config, seed=1, scale=0.3))
    settings = Settings(
        lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo"
    )
    studio = Studio(settings)
    studio.manager.load_model("demo")
    return {"url": launch_studio(studio), "root": root, "loras": loras, "studio": studio}


@pytest.fixture()
def client(app_env):
    return Client(app_env["url"], verbose=False)


@pytest.fixture()
def start_png(tmp_path, start_image):
    path = tmp_path / "start.png"
    start_image.save(path)
    return path


def test_only_the_main_actions_are_in_the_api(client):
    endpoints = client.view_api(return_format="dict", print_info=False)
    assert set(endpoints["named_endpoints"]) == {"/render", "/cancel"}
    assert endpoints["unnamed_endpoints"] == {}


def test_render_through_the_api(client, app_env, start_png):
    stack = Stack(entries=[StackEntry.single(app_env["loras"] / "style.safetensors", 0.7, 0.2)])
    settings = {"frames": 9, "steps": 4, "width": 32, "height": 48, "seed": 3}
    video, record_json = client.predict(
        handle_file(str(start_png)),
        "a cat walking",
        json.dumps(settings),
        stack.to_json(),
        api_name="/render",
    )
    record = json.loads(record_json)
    info = probe_video(video)
    assert (info.frames, info.width, info.height) == (9, 32, 48)
    assert record["settings"]["seed"] == 3 and record["settings"]["prompt"] == "a cat walking"
    assert sorted(r["weight"] for r in record["loras"]) == [0.2, 0.7]
    outputs = list((app_env["root"] / "outputs").glob("*.mp4"))
    assert any(p.name == record["start_image"]["file"].replace(".start.png", ".mp4") for p in outputs)


@pytest.mark.parametrize(
    ("settings", "stack", "words"),
    [
        ('{"frames": 10}', "", "4k+1"),
        ("[1, 2]", "", "must be a JSON object"),
        ("{", "", "not valid JSON"),
        (
            "{}",
            '{"version": 1, "entries": [{"name": "x", "high": {"path": "../../etc/passwd"}}]}',
            "outside the LoRA folders",
        ),
        (
            "{}",
            '{"version": 1, "entries": [{"name": "x", "high": {"path": "gone.safetensors"}}]}',
            "not found",
        ),
    ],
)
def test_bad_requests_get_a_sentence_and_the_app_keeps_serving(client, start_png, settings, stack, words):
    with pytest.raises(Exception, match=re.escape(words)):
        client.predict(handle_file(str(start_png)), "x", settings, stack, api_name="/render")
    video, _ = client.predict(
        handle_file(str(start_png)), "x", '{"frames": 5, "steps": 2}', "", api_name="/render"
    )
    assert probe_video(video).frames == 5


def test_cancel_through_the_api_stops_the_render(client, start_png, app_env):
    before = set((app_env["root"] / "outputs").glob("*.mp4"))
    job = client.submit(
        handle_file(str(start_png)), "slow", '{"frames": 17, "steps": 200, "width": 64, "height": 64}', "",
        api_name="/render",
    )  # fmt: skip
    deadline = time.time() + 60
    while client.predict(api_name="/cancel") != "cancelling":
        assert time.time() < deadline, "the render never started"
        time.sleep(0.2)
    with pytest.raises(Exception, match="cancelled"):
        job.result(timeout=60)
    assert set((app_env["root"] / "outputs").glob("*.mp4")) == before
