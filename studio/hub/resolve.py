"""Hub repo ids as LoRA paths, everywhere a LoRA path is accepted (the Python API, the guide's LoRA lists,
presets, ``render --lora``, the API's stack).

A path that is not a file on this machine and looks like ``owner/name`` is a Hub repo; the file that fits is
picked (:mod:`studio.hub.pick`) from the repo's ``.safetensors`` files, whose headers are read remotely as the
Hub tab does (:meth:`HubClient.files <studio.hub.remote.RemoteFilesMixin.files>`). ``owner/name/sub/file.safetensors``
names one file. The choice is pinned: a :class:`~studio.stack.schema.LoraSource` with the commit sha and the
file's sha256, downloaded (when asked) through the same path as the Hub tab's downloads, so it is checked,
recorded in the download registry and in the render record like any Hub source.

Offline (``HF_HUB_OFFLINE``, or the Hub cannot be reached) the repo's copy in the Hugging Face cache is used
when there is one (its ``main`` snapshot, or the newest); without one the sentence says so. A placeholder such
as ``lightx2v/...`` gets a sentence and no Hub call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from studio.errors import LoraFileError
from studio.hub.common import HubError
from studio.hub.pick import Candidate, Fit, experts_for, pick
from studio.loras.compat import check_compat
from studio.loras.inspect import inspect_lora
from studio.loras.keys import Expert
from studio.loras.library import _File, _group_files
from studio.stack.schema import LoraSource, Stack, StackEntry

_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_PLACEHOLDER_RE = re.compile(r"\.\.\.|…|[<>{}*?]|^(?:owner|user|your[\w-]*)/", re.I)
SUFFIX = ".safetensors"


class HubUnavailable(LoraFileError):
    """A repo path cannot be resolved now: offline (or the Hub unreachable) and not in the cache."""


@dataclass
class HubContext:
    """What resolving a repo path needs: a Hub client (made on first use), what the file must fit, a token.

    The token is kept in memory only, like the Hub client's own.
    """

    hub: object | None = None  # a studio.hub.client.HubClient; None: one on ``cache_dir``, made when needed
    fit: Fit = field(default_factory=Fit)
    token: str | None = None
    cache_dir: Path | None = None

    def client(self):
        if self.hub is None:
            from studio.hub.client import HubClient

            self.hub = HubClient(cache_dir=self.cache_dir)
        return self.hub


@dataclass(frozen=True)
class RepoPath:
    """``owner/name`` (pick a file) or ``owner/name/sub/file.safetensors`` (that file)."""

    repo: str
    file: str | None = None

    def __str__(self) -> str:
        return f"{self.repo}/{self.file}" if self.file else self.repo


def parse_repo_path(text: str) -> RepoPath | None:
    """The Hub repo (and file) ``text`` names; ``None`` when it does not look like one.

    Refuses a placeholder (``lightx2v/...``, ``<your-lora>``) with a sentence, without a Hub call.
    """
    text = (text or "").strip().removeprefix("hf://")
    if _PLACEHOLDER_RE.search(text) and "/" in text:
        raise LoraFileError(
            f"{text!r} is a placeholder, not a LoRA: put the Hub repo (owner/name, e.g. "
            "lightx2v/Wan2.2-Distill-Loras) or a .safetensors file there."
        )
    if "\\" in text or text.startswith(("/", "~", ".")) or "//" in text:
        return None
    parts = text.split("/")
    if len(parts) < 2 or not all(_PART_RE.match(p) for p in parts[:2]) or ".." in parts:
        return None
    repo = "/".join(parts[:2])
    if len(parts) == 2:
        return None if text.lower().endswith(SUFFIX) else RepoPath(repo)
    rest = "/".join(parts[2:])
    return RepoPath(repo, rest) if rest.lower().endswith(SUFFIX) else None


def local_file(text: str, roots: Sequence[Path]) -> Path | None:
    """The existing ``.safetensors`` file ``text`` names on this machine (absolute, or in a LoRA folder)."""
    given = Path(text).expanduser()
    found = [given] if given.is_absolute() else [Path(r) / given for r in roots]
    for candidate in found:
        if candidate.is_file():
            return candidate.resolve()
    return None


def is_repo_source(source: LoraSource | None, roots: Sequence[Path]) -> bool:
    """Whether a stack source is a Hub repo written as a path (and not a file in the LoRA folders)."""
    if source is None or source.is_hub or source.path is None:
        return False
    return local_file(source.path, roots) is None and parse_repo_path(source.path) is not None


# ------------------------------------------------------------------------------------------- choosing


@dataclass
class Choice:
    """What a repo path resolved to: the file per expert, pinned to a commit, and how it was found."""

    repo: str
    revision: str  # the commit sha
    files: dict[Expert, str]
    sha256: dict[str, str | None] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)  # file -> local path, once downloaded (or cached)
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False

    def source(self, expert: Expert) -> LoraSource | None:
        file = self.files.get(expert)
        if file is None:
            return None
        return LoraSource(repo=self.repo, file=file, revision=self.revision, sha256=self.sha256.get(file))

    def entry(self, name: str, weight_high: float, weight_low: float, **kw) -> StackEntry:
        high, low = self.source("high"), self.source("low")
        return StackEntry(
            name=name,
            high=high,
            low=low,
            weight_high=weight_high if high is not None else 0.0,
            weight_low=weight_low if low is not None else 0.0,
            **kw,
        )


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _remote_candidates(hub, repo: str, fit: Fit, token: str | None) -> tuple[str, list[Candidate], dict]:
    listing = hub.files(repo, model_config=fit.config, model_name=fit.model_name, token=token)
    by_file = {f.file: f for f in listing.files}
    cands: list[Candidate] = []
    for item in listing.items:
        roles = (
            [(item.high_file, "high", item.low_file), (item.low_file, "low", item.high_file)]
            if item.kind == "pair"
            else [(item.file, item.expert, None)]
        )
        for file, expert, partner in roles:
            f = by_file[file]
            cands.append(Candidate(file, f.info, f.error, f.compat, expert, partner))
    listed = {c.file for c in cands}
    cands += [Candidate(f.file, f.info, f.error, f.compat) for f in listing.files if f.file not in listed]
    return listing.sha, sorted(cands, key=lambda c: c.file), {f.file: f.sha256 for f in listing.files}


def _snapshot(repo: str) -> tuple[str, Path] | None:
    """(commit sha, folder) of the repo's copy in the Hugging Face cache: ``main``, else the newest."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    snapshots = folder / "snapshots"
    try:
        sha = (folder / "refs" / "main").read_text().strip()
        if (snapshots / sha).is_dir():
            return sha, snapshots / sha
    except OSError:
        pass
    try:
        found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return (found[-1].name, found[-1]) if found else None


def _cached_candidates(repo: str, fit: Fit) -> tuple[str, list[Candidate], dict[str, Path]] | None:
    snap = _snapshot(repo)
    if snap is None:
        return None
    sha, root = snap
    files: list[_File] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() == SUFFIX and path.is_file():
            try:
                files.append(_File(path, root, inspect_lora(path, hash_file=False), None))
            except LoraFileError as exc:
                files.append(_File(path, root, None, str(exc)))
    cands: list[Candidate] = []
    paths: dict[str, Path] = {}
    for item in _group_files(files):
        roles = (
            [
                (item.high_rel_path, item.high_info, "high", item.low_rel_path),
                (item.low_rel_path, item.low_info, "low", item.high_rel_path),
            ]
            if item.kind == "pair"
            else [(item.rel_path, item.info, item.expert, None)]
        )
        for rel, info, expert, partner in roles:
            compat = (
                check_compat(info, fit.config, model_name=fit.model_name) if info and fit.config else None
            )
            cands.append(Candidate(rel, info, item.error if info is None else None, compat, expert, partner))
            paths[rel] = root / rel
    return sha, sorted(cands, key=lambda c: c.file), paths


def choose(
    hub,
    path: RepoPath | str,
    experts: tuple[Expert, ...],
    *,
    name: str | None = None,
    fit: Fit = Fit(),
    token: str | None = None,
) -> Choice:
    """Pick (and pin) the file(s) of a repo path for ``experts``; nothing is downloaded here."""
    if isinstance(path, str):
        parsed = parse_repo_path(path)
        if parsed is None:
            raise LoraFileError(f"{path!r} is not a Hub repo (owner/name) or a file in it.")
        path = parsed
    offline = _offline()
    failure: HubError | None = None
    if not offline:
        try:
            sha, cands, sha256 = _remote_candidates(hub, path.repo, fit, token)
        except HubError as exc:
            if "cannot be reached" not in str(exc):
                raise
            failure = exc
        else:
            return _chosen(path, experts, name, fit, sha, cands, sha256=sha256)
    cached = _cached_candidates(path.repo, fit)
    if cached is None:
        why = (
            "the studio is offline (HF_HUB_OFFLINE is set)"
            if offline
            else str(failure)
            .split(";")[0]
            .removeprefix("The ")
            .replace("Hugging Face Hub", "the Hugging Face Hub")
        )
        raise HubUnavailable(
            f"{path} cannot be used: {why}, and {path.repo} is not in the Hugging Face cache. Go online once "
            "to download it, or give a .safetensors file on this machine."
        )
    sha, cands, paths = cached
    choice = _chosen(path, experts, name, fit, sha, cands, paths=paths)
    choice.from_cache = True
    choice.notes.append(f"{path.repo}: used its copy in the Hugging Face cache (commit {sha[:7]}), offline.")
    return choice


def _chosen(path, experts, name, fit, sha, cands, *, sha256=None, paths=None) -> Choice:
    notes: list[str] = []
    if path.file is not None:
        known = {c.file: c for c in cands}
        if path.file not in known:
            shown = ", ".join(sorted(known)[:6]) or "none"
            raise LoraFileError(
                f"{path.file} is not a .safetensors file of {path.repo} (its files: {shown}); check the name."
            )
        if known[path.file].error:
            raise LoraFileError(f"{path}: {known[path.file].error}")
        files = {e: path.file for e in experts}
    else:
        files, notes = pick(path.repo, cands, experts, name=name, fit=fit)
    choice = Choice(repo=path.repo, revision=sha, files=files, notes=notes)
    for file in set(files.values()):
        choice.sha256[file] = (sha256 or {}).get(file)
        if paths and file in paths:
            choice.paths[file] = paths[file]
    return choice


def download(hub, choice: Choice, *, token: str | None = None, progress=None) -> Choice:
    """Fetch the chosen files pinned to the commit (checked against their sha256 and registered)."""
    wanted = [f for f in dict.fromkeys(choice.files.values()) if f not in choice.paths]
    if not wanted:
        if choice.from_cache:  # make sure the cached files are hashed and registered like downloads
            from studio.loras.hashing import file_sha256

            for file, path in choice.paths.items():
                choice.sha256[file] = choice.sha256.get(file) or file_sha256(path, cache_dir=hub.cache_dir)
        return choice
    expected = {f: s for f in wanted if (s := choice.sha256.get(f))}
    got = hub.download(choice.repo, wanted, choice.revision, progress, token=token, expected_sha256=expected)
    for file, path in zip(wanted, got, strict=True):
        choice.paths[file] = path
    return choice


# ------------------------------------------------------------------------------------------- stacks


def resolve_entry(
    hub,
    text: str,
    *,
    name: str | None = None,
    weight_high: float = 1.0,
    weight_low: float = 1.0,
    experts: tuple[Expert, ...] = ("high", "low"),
    roots: Sequence[Path] = (),
    fit: Fit = Fit(),
    fetch: bool = True,
    token: str | None = None,
) -> tuple[StackEntry, list[str]]:
    """A stack entry for a LoRA path (a local file, or a Hub repo path) on ``experts``, and notes."""
    found = local_file(text, roots)
    if found is not None:
        source = LoraSource.local(found)
        return (
            StackEntry(
                name=name or found.stem,
                high=source if "high" in experts else None,
                low=source if "low" in experts else None,
                weight_high=weight_high if "high" in experts else 0.0,
                weight_low=weight_low if "low" in experts else 0.0,
            ),
            [],
        )
    parsed = parse_repo_path(text)
    if parsed is None:
        folders = ", ".join(str(r) for r in roots) or "none"
        raise LoraFileError(
            f"The LoRA {text!r} is neither a .safetensors file on this machine (LoRA folders: {folders}) nor a "
            "Hub repo (owner/name, or owner/name/file.safetensors)."
        )
    try:
        choice = choose(hub, parsed, experts, name=name, fit=fit, token=token)
    except HubError as exc:
        if "was not found on the Hugging Face Hub" not in str(exc):
            raise
        raise LoraFileError(f"{text!r} is not a .safetensors file on this machine, and {exc}") from None
    if fetch:
        download(hub, choice, token=token)
    label = name or (PurePosixPath(parsed.file).stem if parsed.file else parsed.repo.split("/")[1])
    return choice.entry(label[:200], weight_high, weight_low), choice.notes


def resolve_stack(
    hub, stack: Stack, *, roots: Sequence[Path] = (), fit: Fit = Fit(), fetch: bool = True, token=None
) -> tuple[Stack, list[str]]:
    """``stack`` with every source that is a Hub repo path replaced by the pinned Hub file(s) it means.

    An entry names its experts by where the repo path sits (``high``, ``low`` or both); its name is the hint.
    Stacks without repo paths come back unchanged, with no Hub call.
    """
    if not any(is_repo_source(s, roots) for e in stack.entries for s in (e.high, e.low)):
        return stack, []
    entries: list[StackEntry] = []
    notes: list[str] = []
    for entry in stack.entries:
        texts = {e: s.path for e in ("high", "low") if is_repo_source(s := entry.source(e), roots)}
        if not texts:
            entries.append(entry)
            continue
        data = entry.model_dump()
        for text in dict.fromkeys(texts.values()):
            experts = tuple(e for e, t in texts.items() if t == text)
            if not entry.enabled or all(entry.weight(e) == 0 for e in experts):
                continue  # never rendered: left as written (and never fetched)
            try:
                choice = choose(hub, text, experts, name=entry.name, fit=fit, token=token)
                if fetch:
                    download(hub, choice, token=token)
            except HubUnavailable as exc:
                raise HubUnavailable(f"{entry.name}: {exc}") from None
            except (LoraFileError, HubError) as exc:
                raise LoraFileError(f"{entry.name}: {exc}") from None
            notes += choice.notes
            for e in experts:
                data[e] = choice.source(e).model_dump()
        entries.append(StackEntry.model_validate(data))
    return Stack(entries=entries), notes


def fit_of(spec, config=None) -> Fit:
    """The :class:`Fit` of a loaded model (a :class:`~studio.models.registry.ModelSpec`)."""
    ti2v = "ti2v" in f"{spec.name} {spec.label}".lower()
    return Fit(task=None if ti2v else "i2v", experts=spec.experts, config=config, model_name=spec.label)


__all__ = [
    "Choice",
    "Fit",
    "HubContext",
    "HubUnavailable",
    "RepoPath",
    "choose",
    "download",
    "experts_for",
    "fit_of",
    "is_repo_source",
    "local_file",
    "parse_repo_path",
    "resolve_entry",
    "resolve_stack",
]
