"""Wan LoRA Studio: `python app.py` starts the web studio (also the Hugging Face Space entry point)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Wan LoRA Studio web UI")
    p.add_argument("--model", default=None, help="demo, wan2.2-i2v-a14b, wan2.2-ti2v-5b or a pipeline folder")
    p.add_argument(
        "--dtype",
        default=None,
        help="load the model in float32, bfloat16 or float16 (default: bfloat16 on a GPU, float32 on the CPU; "
        "$STUDIO_DTYPE)",
    )
    p.add_argument("--lora-dir", action="append", default=[], help="another LoRA folder (repeatable)")
    p.add_argument("--outputs", default=None, help="folder for rendered videos (default ./outputs)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860 or $GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--max-queue", type=int, default=16, help="renders that may wait in the queue")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from studio.errors import StudioError
    from studio.service import Studio
    from studio.settings import Settings
    from studio.ui.launch import launch

    args = parse_args(argv)
    try:
        settings = Settings.from_env(model=args.model, outputs_dir=args.outputs, dtype=args.dtype)
        if args.lora_dir:
            settings = settings.with_(lora_dirs=[*settings.lora_dirs, *map(Path, args.lora_dir)])
        studio = Studio(settings)
        studio.manager.load_model(settings.model)
    except StudioError as exc:
        sys.exit(f"error: {exc}")
    launch(studio, host=args.host, port=args.port, share=args.share, max_queue=args.max_queue)


if __name__ == "__main__":
    main()
