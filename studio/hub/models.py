"""A model's weights from the Hugging Face Hub: their exact size and a resumable download into the HF cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from studio.errors import ModelError
from studio.hub.errors import hub_failure_message as sentence
from studio.models.registry import ModelSpec


def hub_download_size(spec: ModelSpec) -> int:
    """Exact download size from the Hub's file list; raises ModelError when the Hub can't be reached."""
    if spec.repo_id is None:
        return 0
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(spec.repo_id, files_metadata=True)
    except Exception as exc:
        raise ModelError(hub_failure_message(spec, exc)) from None
    return sum((s.size or 0) for s in (info.siblings or []))


def hub_failure_message(spec: ModelSpec, exc: Exception) -> str:
    return sentence(exc, repo=spec.repo_id, action="download models")


def download_model(spec: ModelSpec, progress: Callable[[int, int], None] | None = None) -> Path:
    """Download ``spec``'s weights into the HF cache (resumable); ``progress(done_bytes, total_bytes)``."""
    if spec.repo_id is None:
        raise ModelError(f"{spec.label} is not downloaded from the Hub.")
    from huggingface_hub import snapshot_download

    tqdm_class = _progress_tqdm(progress) if progress else None
    try:
        return Path(snapshot_download(spec.repo_id, tqdm_class=tqdm_class))
    except Exception as exc:
        raise ModelError(hub_failure_message(spec, exc)) from None


def _progress_tqdm(progress: Callable[[int, int], None]):
    """A tqdm class that reports byte progress to ``progress(done, total)``.

    ``snapshot_download`` (which accepts ``tqdm_class``) opens two byte bars that both
    aggregate all files (bytes received, bytes written incl. resumed parts) and a file
    counter, which is ignored; the furthest byte bar is reported, so it never steps back.
    """
    import threading

    from tqdm.auto import tqdm

    bars: dict[int, tuple[int, int]] = {}
    lock = threading.Lock()

    class _Reporter(tqdm):
        def update(self, n=1):
            result = super().update(n)
            if self.unit == "B":
                with lock:
                    bars[id(self)] = (int(self.n), int(self.total or 0))
                    done = max(d for d, _ in bars.values())
                    total = max(t for _, t in bars.values())
                progress(done, max(total, done))
            return result

    return _Reporter
