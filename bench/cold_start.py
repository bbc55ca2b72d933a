"""6. Cold start: ``python app.py`` to the page answering HTTP 200 on loopback, then the first
demo render through the API (``/render`` with the demo model's default settings), in seconds.

The app runs in a fresh process with empty temporary outputs and cache folders (so the demo
model is built as on a first launch), on a free loopback port.

Run alone: ``python -m bench.cold_start``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench import common
from bench.context import Context, standalone

TITLE = "6. Cold start of the studio (demo model, CPU)"
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_200(url: str, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"app.py did not answer HTTP 200 within {START_TIMEOUT:.0f} s")


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from gradio_client import Client, handle_file
    from PIL import Image

    home = ctx.tmp / "cold"
    home.mkdir(parents=True, exist_ok=True)
    image = home / "start.png"
    Image.new("RGB", (64, 64), (120, 90, 200)).save(image)
    port = free_port()
    env = dict(
        os.environ,
        STUDIO_CACHE=str(home / "cache"),
        STUDIO_OUTPUTS=str(home / "outputs"),
        STUDIO_MODEL="demo",
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.pop("GRADIO_SERVER_NAME", None)
    url = f"http://127.0.0.1:{port}/"
    common.status("cold start: launching python app.py")
    log = open(home / "app.log", "wb")  # noqa: SIM115 (closed below, after the process ends)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_200(url, proc, time.monotonic() + START_TIMEOUT)
        cold_start_s = time.perf_counter() - start
        common.status("cold start: first render through the API")
        t0 = time.perf_counter()
        client = Client(url, verbose=False)
        connect_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        video, _record = client.predict(
            handle_file(str(image)), "a cat walking", "{}", "", api_name="/render"
        )
        first_render_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        client.predict(handle_file(str(image)), "a cat walking", "{}", "", api_name="/render")
        second_render_s = time.perf_counter() - t2
        if not Path(video).exists():
            raise RuntimeError("the render returned no video file")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    rows = [
        ["python app.py → HTTP 200 on loopback", f"{cold_start_s:.2f}"],
        ["gradio_client connect (reads the API config)", f"{connect_s:.2f}"],
        ["first demo render through /render (default settings)", f"{first_render_s:.2f}"],
        ["second render (warm)", f"{second_render_s:.2f}"],
    ]
    text = common.table(TITLE + "; seconds, one run", ["step", "s"], rows)
    return text, {"cold_start_s": cold_start_s, "first_render_s": first_render_s}


if __name__ == "__main__":
    standalone(run)
