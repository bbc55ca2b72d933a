"""Several clients at once: each keeps its own stack and settings, renders queue one at a time."""

from __future__ import annotations

import json
import threading

import pytest
from gradio_client import Client, handle_file

from studio.service import Studio
from studio.settings import Settings
from studio.stack.schema import Stack, StackEntry

CLIENTS = 5


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, launch_studio):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("concurrent")
    loras = root / "loras"
    for i in range(CLIENTS):
        write_lora(loras / f"lora{i}.safetensors", make_lora_tensors(demo_transformer_config, seed=i))
    studio = Studio(
        Settings(lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo")
    )
    studio.manager.load_model("demo")
    return {"studio": studio, "loras": loras, "root": root, "launch": launch_studio}


def run_clients(url, start_png, jobs):
    """Submit every job from its own client at once; returns (job index, outcome) for each."""
    outcomes: dict[int, object] = {}

    def one(i, settings, stack):
        try:
            _video, record = Client(url, verbose=False).predict(
                handle_file(str(start_png)), f"client {i}", json.dumps(settings), stack, api_name="/render"
            )
            outcomes[i] = json.loads(record)
        except Exception as exc:  # a rejection reaches the client as an error with a message
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return outcomes


def test_concurrent_clients_keep_their_own_stacks_and_settings(env, tmp_path, start_image):
    start_png = tmp_path / "start.png"
    start_image.save(start_png)
    url = env["launch"](env["studio"])
    jobs = []
    for i in range(CLIENTS):
        stack = Stack(entries=[StackEntry.single(env["loras"] / f"lora{i}.safetensors", (i + 1) / 10, 0.2)])
        jobs.append(({"frames": 5, "steps": 3, "width": 32, "height": 32, "seed": 100 + i}, stack.to_json()))
    outcomes = run_clients(url, start_png, jobs)
    assert sorted(outcomes) == list(range(CLIENTS))
    for i, record in outcomes.items():
        assert isinstance(record, dict), record
        assert record["settings"]["prompt"] == f"client {i}" and record["settings"]["seed"] == 100 + i
        files = {r["file"].rsplit("/", 1)[-1] for r in record["loras"]}
        assert files == {f"lora{i}.safetensors"}
        assert sorted(r["weight"] for r in record["loras"]) == sorted([(i + 1) / 10, 0.2])


def test_a_full_queue_rejects_with_a_clear_message(env, tmp_path, start_image):
    start_png = tmp_path / "start.png"
    start_image.save(start_png)
    url = env["launch"](env["studio"], max_queue=1)
    slow = {"frames": 17, "steps": 60, "width": 64, "height": 64, "seed": 1}
    outcomes = run_clients(url, start_png, [(slow, "")] * 4)
    done = [o for o in outcomes.values() if isinstance(o, dict)]
    rejected = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert done and rejected, outcomes
    assert all("queue is full" in str(e).lower() for e in rejected), rejected
