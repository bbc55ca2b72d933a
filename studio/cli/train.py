"""``python -m studio train DATASET --name NAME``: train a LoRA pair on the studio's model.

    python -m studio train clips/ --model wan2.2-i2v-a14b --name mystyle --steps 2000 \\
        --rank 32 --lr 1e-4 --frames 33 --save-every 500 --sample-every 500

prints one line per step (expert, loss, ETA) on stderr; Ctrl-C stops at the next step with a
checkpoint (a second Ctrl-C aborts); ``--resume RUN_OR_CHECKPOINT`` continues the same run
(more ``--steps`` may be given). At the end the pair ``NAME_high_noise.safetensors`` /
``NAME_low_noise.safetensors`` is in the first LoRA folder. ``--json`` prints
``{"files", "loss_first", "loss_last", "val_loss": {"high": {"base", "trained"}, ...}, ...}``.
``--export-config musubi|diffusion-pipe`` writes the same run as that tool's config files
(into ``--config-dir``, default ``NAME-TOOL/``) instead of training.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from studio.cli.common import EXIT_CANCELLED, EXIT_OK
from studio.errors import ValidationError

# CLI flag → TrainOptions field, for the flags that map one to one.
_FIELDS = {
    "name": "name", "model": "model", "steps": "steps", "rank": "rank", "alpha": "alpha", "lr": "lr",
    "frames": "frames", "width": "width", "height": "height", "experts": "experts", "batch": "batch",
    "grad_accum": "grad_accum", "seed": "seed", "boundary": "boundary", "shift": "shift",
    "save_every": "save_every", "sample_every": "sample_every", "sample_image": "sample_image",
    "sample_prompt": "sample_prompt", "sample_steps": "sample_steps", "val_every": "val_every",
    "holdout": "holdout", "val_dir": "val_dir", "trigger": "trigger", "crops": "crops",
    "save_dtype": "save_dtype",
}  # fmt: skip


def add_parser(sub) -> None:
    from studio.engine.memory import MODES, PRECISIONS
    from studio.training.configs import TOOLS
    from studio.training.options import MODULE_GROUPS

    p = sub.add_parser("train", help="train a LoRA pair (high- and low-noise experts) on a dataset")
    p.set_defaults(run=cmd_train)
    p.add_argument("dataset", nargs="?", help="the dataset folder (clips/images with captions)")
    p.add_argument("--name", help="the LoRA's name: NAME_high_noise.safetensors / NAME_low_noise.safetensors")
    p.add_argument("--model", default=None, help="demo, wan2.2-i2v-a14b or a folder (default: as for render)")
    p.add_argument("--experts", choices=("both", "high", "low"), help="train both experts (default) or one")
    p.add_argument("--steps", type=int, help="optimizer steps per expert (default 1000)")
    p.add_argument("--rank", type=int, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    p.add_argument("--frames", type=int, help="frames per clip, 4k+1 (default: the model's, at most 33)")
    p.add_argument("--width", type=int, help="training width, multiple of 16 (default: the model's)")
    p.add_argument("--height", type=int, help="training height, multiple of 16 (default: the model's)")
    p.add_argument("--batch", type=int, help="clips per micro-batch (default 1)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--boundary", type=float, help="expert split (default: the model's, 0.9 for Wan2.2 I2V)")
    p.add_argument("--shift", type=float, help="flow shift of the timestep sampling (default: the model's)")
    p.add_argument("--target-modules", nargs="+", choices=MODULE_GROUPS, help="which layers get a LoRA")
    p.add_argument("--hflip", action="store_true", default=None, help="also train on mirrored clips")
    p.add_argument("--random-crop", action="store_true", default=None, help="also train on random crops")
    p.add_argument("--crops", type=int, help="random crops per clip (default 3)")
    p.add_argument(
        "--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false", default=None,
        help="keep activations (faster, more memory)",
    )  # fmt: skip
    p.add_argument("--save-every", type=int, help="a checkpoint every N steps (default: at the end)")
    p.add_argument("--sample-every", type=int, help="a sample render every N steps (default: none)")
    p.add_argument(
        "--sample-image", help="start image of the samples (default: the first clip's first frame)"
    )
    p.add_argument("--sample-prompt", help="prompt of the samples (default: the first clip's caption)")
    p.add_argument("--sample-steps", type=int, help="denoising steps of the samples (default: the model's)")
    p.add_argument("--val-every", type=int, help="validation loss every N steps (default: start and end)")
    p.add_argument("--holdout", type=int, help="hold the last N items out as validation clips")
    p.add_argument("--val-dir", help="a folder of validation clips (default: the training clips)")
    p.add_argument("--trigger", help="a trigger word, added to captions that lack it and to the metadata")
    p.add_argument("--save-dtype", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a pair of the same name")
    p.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue a stopped run")
    p.add_argument("--export-config", choices=TOOLS, help="write this tool's configs instead of training")
    p.add_argument("--config-dir", help="where --export-config writes (default: NAME-TOOL/)")
    p.add_argument(
        "--lora-dir", action="append", default=[], help="another LoRA folder (the first gets the pair)"
    )
    p.add_argument("--mode", choices=MODES, default="auto", help="memory mode (default: auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16", help="storage of the experts' weights")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _given(args) -> dict:
    """The training settings the user gave (None = not given)."""
    values = {
        field: getattr(args, flag) for flag, field in _FIELDS.items() if getattr(args, flag) is not None
    }
    for flag in ("hflip", "random_crop", "overwrite", "gradient_checkpointing", "target_modules"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    return values


def _options(values: dict, spec):
    from studio.stack.schema import parse_model
    from studio.training.options import TrainOptions, model_defaults

    if not values.get("name"):
        raise ValidationError("Give the LoRA a --name (letters, digits, '_', '-' or '.').")
    return parse_model(
        TrainOptions, {**model_defaults(spec), "model": spec.name, **values}, "training settings"
    )


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f" (ETA {hours}h{minutes:02d}m)" if hours else f" (ETA {minutes}m{secs:02d}s)"


def _print_event(event) -> None:
    if event.kind == "step":
        print(f"step {event.step}/{event.total} {event.expert}-noise loss {event.loss:.4f}{_eta(event.eta_s)}",
              file=sys.stderr, flush=True)  # fmt: skip
    else:
        print(event.message, file=sys.stderr, flush=True)


def cmd_export_config(args, settings, spec) -> int:
    from studio.training.configs import write_configs
    from studio.training.dataset import check_dataset
    from studio.training.options import resolve

    if not args.dataset:
        raise ValidationError("Give the dataset folder to write the configuration for.")
    options = resolve(_options(_given(args), spec), boundary=spec.boundary_ratio, shift=spec.defaults.shift)
    kw = dict(frames=options.frames, width=options.width, height=options.height, fps=spec.defaults.fps,
              resample_fps=options.resample_fps, trigger=options.trigger)  # fmt: skip
    report = check_dataset(args.dataset, **kw)
    val = check_dataset(options.val_dir, **kw) if options.val_dir else None
    out = Path(args.config_dir or f"{options.name}-{args.export_config}")
    for path in write_configs(args.export_config, options, report, out, val_report=val):
        print(f"wrote {path}")
    return EXIT_OK


def cmd_train(args) -> int:
    from studio.engine.manager import PipelineManager
    from studio.engine.memory import MemoryConfig
    from studio.models.registry import default_model_name, resolve_model
    from studio.settings import Settings
    from studio.training.trainer import StopToken, Trainer

    settings = Settings.from_env(model=args.model)
    if args.lora_dir:
        settings = settings.with_(
            lora_dirs=[*(Path(p).expanduser() for p in args.lora_dir), *settings.lora_dirs]
        )
    if args.export_config:
        return cmd_export_config(args, settings, resolve_model(default_model_name(settings)))
    if not args.resume and not args.dataset:
        raise ValidationError("Give the dataset folder to train on (or --resume a run).")
    manager = PipelineManager(settings, memory=MemoryConfig(mode=args.mode, precision=args.precision))
    if args.resume:
        trainer = Trainer(
            manager, dataset=args.dataset, resume=args.resume, overrides=_given(args), on_event=_print_event
        )
    else:
        options = _options(_given(args), resolve_model(default_model_name(settings)))
        trainer = Trainer(manager, options, dataset=args.dataset, on_event=_print_event)

    stop = StopToken()

    def on_interrupt(*_):
        print("stopping at the next step (Ctrl-C again to abort)…", file=sys.stderr, flush=True)
        stop.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = trainer.run(stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        for path in result.files:
            print(f"{'checkpoint' if result.stopped else 'wrote'} {path}")
    return EXIT_CANCELLED if result.stopped else EXIT_OK
