"""What the running app lets a browser read and upload, over real HTTP on loopback."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from studio.media.video import write_video
from studio.service import Studio
from studio.settings import Settings
from studio.ui.launch import MAX_UPLOAD, default_host


@pytest.fixture(scope="module")
def app(tmp_path_factory, studio_cache, demo_model_dir, launch_studio):
    root = tmp_path_factory.mktemp("secure")
    outputs, loras = root / "outputs", root / "loras"
    outputs.mkdir()
    loras.mkdir()
    (root / "secret.txt").write_text("do not serve me")
    (loras / "private.safetensors").write_bytes(b"x" * 64)
    frames = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    write_video(frames, outputs / "render.mp4", fps=8, metadata={"ok": True})
    os.symlink(root / "secret.txt", outputs / "link.txt")
    os.symlink("/etc/passwd", outputs / "passwd")
    studio = Studio(Settings(lora_dirs=(loras,), outputs_dir=outputs, cache_dir=studio_cache, model="demo"))
    studio.manager.load_model("demo")
    return {"url": launch_studio(studio), "root": root, "outputs": outputs, "loras": loras}


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def file_url(app, path: str) -> str:
    return f"{app['url']}gradio_api/file={urllib.parse.quote(path)}"


def test_renders_in_the_outputs_folder_are_served(app):
    assert get(file_url(app, str(app["outputs"] / "render.mp4"))) == 200


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        "{root}/secret.txt",
        "{outputs}/../secret.txt",
        "{outputs}/link.txt",  # a symlink out of the outputs folder
        "{outputs}/passwd",
        "{loras}/private.safetensors",  # LoRA files are read by the studio, not served
        "{outputs}/\u202eevil.mp4",  # odd Unicode (right-to-left override)
        "{outputs}/..%2f..%2fsecret.txt",
        "{outputs}/render.mp4\x00.txt",
    ],
)
def test_files_outside_the_served_folders_are_refused(app, target):
    path = target.format(root=app["root"], outputs=app["outputs"], loras=app["loras"])
    assert get(file_url(app, path)) in (400, 403, 404)


def test_uploads_are_size_limited(app):
    limit = int(MAX_UPLOAD.removesuffix("mb")) * 1024 * 1024
    body = b'--B\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
    body += b"\0" * (limit + 1024) + b"\r\n--B--\r\n"
    request = urllib.request.Request(
        f"{app['url']}gradio_api/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=B"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413


def test_the_studio_binds_to_loopback_unless_told(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert default_host() == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "user/space")
    assert default_host() == "0.0.0.0"
