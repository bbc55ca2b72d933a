"""``python -m studio compare A.mp4 B.mp4 [...] --out SIDE.mp4 [--label L ...]``: renders side by side."""

from __future__ import annotations

from pathlib import Path

from studio.errors import StudioError


def add_parser(subparsers) -> None:
    c = subparsers.add_parser("compare", help="put renders side by side in one labelled MP4")
    c.add_argument("videos", nargs="+", help="two to eight MP4s")
    c.add_argument("--out", required=True, help="the side-by-side MP4 to write")
    c.add_argument(
        "--label", action="append", default=[], help="a label per video, in order (default: what differs)"
    )
    c.add_argument("--height", type=int, default=None, help="panel height in pixels (default: the tallest)")

    c.set_defaults(run=cmd_compare)


def cmd_compare(args) -> int:
    from studio.errors import ValidationError
    from studio.workflows.compare import default_labels, side_by_side
    from studio.workflows.history import load_record

    videos = [Path(v).expanduser() for v in args.videos]
    for video in videos:
        if not video.is_file():
            raise ValidationError(f"The video {video} was not found.")
    labels = list(args.label)
    if labels and len(labels) != len(videos):
        raise ValidationError(f"Give one --label per video ({len(videos)} videos, {len(labels)} labels).")
    if not labels:
        try:
            records = [load_record(v)[0] for v in videos]
        except StudioError:
            labels = [v.stem for v in videos]
        else:
            labels = default_labels(records, [v.stem for v in videos])
    out = side_by_side(videos, labels, Path(args.out), height=args.height)
    print(f"wrote {out}")
    return 0
