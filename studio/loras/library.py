"""The local LoRA library: every ``.safetensors`` file under the LoRA folders, inspected and paired.

:class:`LoraLibrary` walks any number of roots recursively (symlinks out of a root
and hidden files are skipped, see :func:`studio.loras.sources.list_lora_files`),
inspects each file from its header (:func:`studio.loras.inspect.inspect_lora`) and
groups the high-noise and low-noise halves of Wan2.2 A14B LoRAs into one
:class:`LibraryItem`.

**Index.** What was learnt about each file is kept in ``lora-library-index.json``
in ``cache_dir``, keyed by the file's resolved path and valid while its size and
``mtime_ns`` are unchanged, so a rescan of unchanged files opens none of them
(not even for the header)::

    {"version": 2, "schema": "<LoraInfo fields fingerprint>",
     "entries": {"/abs/a_high.safetensors": {"size": 123, "mtime_ns": 456, "info": {<LoraInfo>}},
                 "/abs/broken.safetensors": {"size": 7, "mtime_ns": 456, "ctime_ns": 789,
                                             "error": "broken.safetensors is not a valid ..."}}}

A file that cannot be read becomes an item with an ``error`` sentence (the scan goes
on); its entry also records ``ctime_ns`` so that fixing its permissions (which does not
change ``mtime``) is noticed. The index is replaced atomically (temporary file +
``os.replace``); a missing, corrupt or outdated index (other version or ``LoraInfo``
fields) is simply rebuilt. :meth:`LoraLibrary.refresh` ignores it and reads every
header again.

**Pairs.** Two files in the same folder are one ``"pair"`` item when

1. their names differ only in a high/low marker — ``x_high_noise``/``x_low_noise``,
   ``x_HIGH_fp16``/``x_LOW_fp16``, ``x_high``/``x_low``, ``xHighNoise``/``xLowNoise``,
   ``x_H``/``x_L``, ``x_H_v1``/``x_L_v1``, ``x_HN``/``x_LN`` (see
   :func:`studio.loras.names.pair_candidates`); or
2. one name is the other plus a high/low marker at the end — ``run`` + ``run_low``
   (``run`` is then the high half) or ``run`` + ``run_high``; or
3. the files say which expert they are for (``LoraInfo.expert_hint`` from their name
   or metadata) and their names without the high/low marker are equal (ignoring case);
   or, after that, exactly one file of the folder says "high" and exactly one says
   "low", both from their training metadata, and both are for the same model size.

Every other file is a ``"single"`` item.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from studio.errors import LoraFileError, StudioError
from studio.loras.hashing import Sha256Cache, file_sha256
from studio.loras.inspect import Expert, LoraInfo, inspect_lora
from studio.loras.names import expert_from_name, expert_markers, pair_candidates
from studio.loras.sources import list_lora_files
from studio.media.files import write_cache_json
from studio.stack.schema import LoraSource, StackEntry

INDEX_FILE_NAME = "lora-library-index.json"
INDEX_VERSION = 2  # 2: new layouts (VideoX-Fun, DiffSynth, PEFT saves, ai-toolkit) and leftovers
MAX_INDEX_ENTRIES = 20_000
_SEPARATORS = "_-. "
# "run" + one of these = the other half of "run" (rule 2).
_TRAILING_MARKER_RE = re.compile(
    r"^(?:[_\-. ](?:high|low|HIGH|LOW|High|Low)(?:[_\- ]?(?:noise|NOISE|Noise))?"
    r"|(?:High|Low)(?:Noise)?|[_\-. ](?:H|L|HN|LN))$"
)
_index_lock = threading.Lock()


def _schema_fingerprint() -> str:
    """Changes when LoraInfo gains or loses fields, so an index written by older code is rebuilt."""
    fields = ",".join(sorted(LoraInfo.model_fields))
    return hashlib.sha256(fields.encode()).hexdigest()[:16]


class LibraryItem(BaseModel):
    """One entry of the library view: a single LoRA file, or a high-noise + low-noise pair.

    A ``"single"`` item has ``path``/``rel_path``/``info`` (and ``high_*``/``low_*`` are
    ``None``); ``expert`` says which expert it is meant for when its name or metadata
    says so ("high"/"low", else ``None`` = both). A ``"pair"`` item has
    ``high_path``/``low_path``, ``high_rel_path``/``low_rel_path`` and
    ``high_info``/``low_info`` (and ``path``/``rel_path``/``info`` are ``None``).
    Paths are absolute (resolved); ``rel_path``s are relative to ``root``. ``error``
    is a sentence when a file could not be read (its ``info`` is then ``None``).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    label: str
    kind: Literal["single", "pair"]
    root: str
    path: str | None = None
    rel_path: str | None = None
    info: LoraInfo | None = None
    expert: Expert | None = None
    high_path: str | None = None
    low_path: str | None = None
    high_rel_path: str | None = None
    low_rel_path: str | None = None
    high_info: LoraInfo | None = None
    low_info: LoraInfo | None = None
    error: str | None = None

    @property
    def paths(self) -> list[str]:
        """The item's file(s): ``[path]`` or ``[high_path, low_path]``."""
        return [p for p in (self.path, self.high_path, self.low_path) if p is not None]

    @property
    def infos(self) -> list[LoraInfo]:
        """The inspection(s) of the item's readable file(s)."""
        return [i for i in (self.info, self.high_info, self.low_info) if i is not None]

    def to_stack_entry(self, weight_high: float = 1.0, weight_low: float = 1.0) -> StackEntry:
        """A stack entry for this item.

        A pair puts its high file on the high-noise expert and its low file on the
        low-noise expert. A single file goes on both experts, unless its name or
        metadata says it is for one expert only: then the other expert gets no source
        and weight 0. Raises :class:`LoraFileError` for an item whose file is unreadable.
        """
        if self.error is not None:
            raise LoraFileError(self.error)
        name = self.label[:200] or "LoRA"
        if self.kind == "pair":
            assert self.high_path is not None and self.low_path is not None
            return StackEntry(
                name=name,
                high=_source(self.high_path, self.high_info),
                low=_source(self.low_path, self.low_info),
                weight_high=weight_high,
                weight_low=weight_low,
            )
        assert self.path is not None
        source = _source(self.path, self.info)
        if self.expert == "high":
            return StackEntry(name=name, high=source, low=None, weight_high=weight_high, weight_low=0.0)
        if self.expert == "low":
            return StackEntry(name=name, high=None, low=source, weight_high=0.0, weight_low=weight_low)
        return StackEntry(name=name, high=source, low=source, weight_high=weight_high, weight_low=weight_low)


def _source(path: str, info: LoraInfo | None) -> LoraSource:
    return LoraSource(path=path, sha256=info.sha256 if info is not None else None)


@dataclass
class _File:
    """One scanned file: where it is, its index entry, and what the scan learnt."""

    path: Path
    root: Path
    info: LoraInfo | None
    error: str | None

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def rel(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def own_expert(self) -> Expert | None:
        """The expert the file's own name or metadata names (not one guessed from its siblings)."""
        if self.info is not None and self.info.expert_hint_source in ("file name", "metadata"):
            return self.info.expert_hint
        return expert_from_name(self.stem)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _item_id(*paths: Path) -> str:
    return hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()[:16]


def _clean_label(left: str, right: str, fallback: str) -> str:
    left = left.rstrip(_SEPARATORS)
    right = right if left else right.lstrip(_SEPARATORS)
    label = (left + right).strip(_SEPARATORS)
    return label or fallback


def _strip_marker(stem: str, fallback: str) -> str:
    """``'dance_HighNoise'`` -> ``'dance'``, ``'x_HIGH_fp16'`` -> ``'x_fp16'``; unchanged without a marker."""
    markers = expert_markers(stem)
    if not markers:
        return stem
    _, start, end = markers[-1] if len(markers) > 1 and markers[-1][2] == len(stem) else markers[0]
    return _clean_label(stem[:start], stem[end:], fallback)


def _with_pairing(info: LoraInfo | None, expert: Expert | None, partner: Path | None) -> LoraInfo | None:
    """``info`` with its expert hint and partner file as the library decided them."""
    if info is None:
        return None
    if partner is not None:
        source = info.expert_hint_source if info.expert_hint == expert else "sibling file"
        return info.model_copy(
            update={"expert_hint": expert, "expert_hint_source": source, "pair_file": partner.name}
        )
    if info.expert_hint_source == "sibling file" or info.pair_file is not None:
        keep = info.expert_hint_source in ("file name", "metadata")
        return info.model_copy(
            update={
                "expert_hint": info.expert_hint if keep else None,
                "expert_hint_source": info.expert_hint_source if keep else None,
                "pair_file": None,
            }
        )
    return info


def _pair_item(high: _File, low: _File, label: str) -> LibraryItem:
    errors = [f.error for f in (high, low) if f.error]
    return LibraryItem(
        id=_item_id(high.path, low.path),
        label=label,
        kind="pair",
        root=str(high.root),
        high_path=str(high.path),
        low_path=str(low.path),
        high_rel_path=high.rel,
        low_rel_path=low.rel,
        high_info=_with_pairing(high.info, "high", low.path),
        low_info=_with_pairing(low.info, "low", high.path),
        error=" ".join(errors) if errors else None,
    )


def _single_item(f: _File) -> LibraryItem:
    info = _with_pairing(f.info, None, None)
    expert = f.own_expert if f.error is None else None
    return LibraryItem(
        id=_item_id(f.path),
        label=f.stem,
        kind="single",
        root=str(f.root),
        path=str(f.path),
        rel_path=f.rel,
        info=info,
        expert=expert,
        error=f.error,
    )


def _group_files(files: Iterable[_File]) -> list[LibraryItem]:
    """Pair the high/low halves among ``files`` (per folder) and make the library items."""
    folders: dict[Path, list[_File]] = {}
    for f in files:
        folders.setdefault(f.path.parent, []).append(f)
    items: list[LibraryItem] = []
    for folder_files in folders.values():
        items.extend(_group_folder(sorted(folder_files, key=lambda f: f.path.name)))
    return items


def _group_folder(files: list[_File]) -> list[LibraryItem]:
    by_stem: dict[str, _File] = {}
    for f in files:
        by_stem.setdefault(f.stem, f)
    paired: set[Path] = set()
    items: list[LibraryItem] = []
    fallback = files[0].path.parent.name if files else "LoRA"

    def take(high: _File, low: _File, label: str) -> None:
        paired.update((high.path, low.path))
        items.append(_pair_item(high, low, label))

    # 1. names that differ only in a high/low marker
    for f in files:
        if f.path in paired:
            continue
        for (kind, start, end), (_, partner_stem) in zip(
            expert_markers(f.stem), pair_candidates(f.stem), strict=True
        ):
            partner = by_stem.get(partner_stem)
            if partner is None or partner.path in paired or partner.path == f.path:
                continue
            high, low = (f, partner) if kind == "high" else (partner, f)
            take(high, low, _clean_label(f.stem[:start], f.stem[end:], fallback))
            break

    # 2. "run" next to "run_low" (run is the high half) or "run_high" (run is the low half)
    for f in files:
        if f.path in paired or expert_from_name(f.stem) is not None:
            continue
        for other in files:
            if other.path in paired or other.path == f.path or not other.stem.startswith(f.stem):
                continue
            rest = other.stem[len(f.stem) :]
            if not _TRAILING_MARKER_RE.match(rest):
                continue
            other_is_high = rest.lstrip(_SEPARATORS)[0] in "hH"
            high, low = (other, f) if other_is_high else (f, other)
            take(high, low, f.stem)
            break

    # 3. headers that say high / low
    left = [f for f in files if f.path not in paired and f.info is not None]
    highs = [f for f in left if f.own_expert == "high"]
    lows = [f for f in left if f.own_expert == "low"]
    for h in list(highs):
        for lo in lows:
            if (
                lo.path not in paired
                and _strip_marker(h.stem, "").lower() == _strip_marker(lo.stem, "").lower()
            ):
                take(h, lo, _strip_marker(h.stem, fallback))
                break
    highs = [f for f in highs if f.path not in paired]
    lows = [f for f in lows if f.path not in paired]
    if len(highs) == 1 and len(lows) == 1:
        h, lo = highs[0], lows[0]
        assert h.info is not None and lo.info is not None
        from_metadata = h.info.expert_hint_source == lo.info.expert_hint_source == "metadata"
        same_size = h.info.model_dim == lo.info.model_dim
        if from_metadata and same_size:
            label = _strip_marker(h.stem, fallback)
            if label == h.stem:
                common = _common_prefix(h.stem, lo.stem).rstrip(_SEPARATORS)
                label = common if len(common) >= 3 else f"{h.stem} + {lo.stem}"
            take(h, lo, label)

    items.extend(_single_item(f) for f in files if f.path not in paired)
    return items


class LoraLibrary:
    """The LoRA files under ``roots``, inspected once and remembered in ``cache_dir``.

    ``hash_files`` also computes each new file's sha256 on the first scan (which
    reads every file once); by default the digest is only filled in when the studio
    already knows it (the sha256 cache in ``cache_dir``, written when a LoRA is loaded).
    """

    def __init__(self, roots: Sequence[Path], cache_dir: Path, *, hash_files: bool = False) -> None:
        self.roots = [Path(r).expanduser() for r in roots]
        self.cache_dir = Path(cache_dir)
        self.hash_files = hash_files
        self.index_file = self.cache_dir / INDEX_FILE_NAME
        self._items: list[LibraryItem] = []
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------
    def scan(self) -> list[LibraryItem]:
        """Every LoRA under the roots as library items; unchanged files are served from the index."""
        return self._scan(use_index=True)

    def refresh(self) -> list[LibraryItem]:
        """Like :meth:`scan`, but read every file's header again (the index is rebuilt)."""
        return self._scan(use_index=False)

    @property
    def items(self) -> list[LibraryItem]:
        """The items of the last scan (empty before the first)."""
        return list(self._items)

    def get(self, item_id: str) -> LibraryItem:
        """The item with ``item_id`` from the last scan (scanning once if needed)."""
        items = self._items or self.scan()
        for item in items:
            if item.id == item_id:
                return item
        raise LoraFileError(
            "That LoRA is no longer in the library; it may have been moved or deleted. Rescan."
        )

    # -- scanning -----------------------------------------------------------------------
    def _roots(self) -> list[Path]:
        roots: list[Path] = []
        for root in self.roots:
            with contextlib.suppress(OSError, RuntimeError):
                resolved = root.resolve()
                if resolved not in roots:
                    roots.append(resolved)
        return roots

    def _scan(self, *, use_index: bool) -> list[LibraryItem]:
        with self._lock:
            roots = self._roots()
            index = self._load_index() if use_index else {}
            known_sha = self._known_sha256()
            seen: dict[str, dict] = {}
            files: list[_File] = []
            changed = not use_index
            for path in list_lora_files(roots):
                root = next((r for r in roots if path.is_relative_to(r)), None)
                if root is None:
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # deleted while we scanned
                except OSError as exc:
                    files.append(_File(path, root, None, _os_error(path, exc)))
                    continue
                key = str(path)
                entry = index.get(key)
                if entry is None or not _entry_valid(entry, st):
                    entry = self._inspect(path, st)
                    changed = True
                info = _entry_info(entry)
                if info is not None and info.sha256 is None:
                    sha = _sha_from(known_sha, key, st) or self._hash(path)
                    if sha is not None:
                        info = info.model_copy(update={"sha256": sha})
                        entry = {**entry, "info": info.model_dump(mode="json")}
                        changed = True
                if info is None and entry.get("error") is None:  # an entry we cannot use: inspect again
                    entry = self._inspect(path, st)
                    info = _entry_info(entry)
                    changed = True
                seen[key] = entry
                files.append(_File(path, root, info, entry.get("error")))
            if changed or set(seen) != {k for k in index if _under(k, roots)}:
                self._save_index(seen, roots)
            order = {r: i for i, r in enumerate(roots)}
            items = _group_files(files)
            items.sort(
                key=lambda it: (order.get(Path(it.root), 0), (it.rel_path or it.high_rel_path or "").lower())
            )
            self._items = items
            return list(items)

    def _inspect(self, path: Path, st: os.stat_result) -> dict:
        entry: dict = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        try:
            info = inspect_lora(path, cache_dir=self.cache_dir, hash_file=self.hash_files)
        except StudioError as exc:
            return {**entry, "ctime_ns": st.st_ctime_ns, "error": str(exc)}
        except OSError as exc:
            return {**entry, "ctime_ns": st.st_ctime_ns, "error": _os_error(path, exc)}
        except Exception as exc:  # a file we cannot make sense of must not stop the scan
            return {
                **entry,
                "ctime_ns": st.st_ctime_ns,
                "error": f"{path.name} could not be inspected ({type(exc).__name__}); check that it is a LoRA file.",
            }
        try:
            after = os.stat(path)
        except OSError:
            after = None
        if after is None or (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            entry["mtime_ns"] = -1  # changed while we read it: not valid next time
        entry["info"] = info.model_dump(mode="json")
        return entry

    def _hash(self, path: Path) -> str | None:
        if not self.hash_files:
            return None
        try:
            return file_sha256(path, cache_dir=self.cache_dir)
        except OSError:
            return None

    # -- the index file -----------------------------------------------------------------
    def _load_index(self) -> dict[str, dict]:
        try:
            data = json.loads(self.index_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(data, dict)
            or data.get("version") != INDEX_VERSION
            or data.get("schema") != _schema_fingerprint()
            or not isinstance(data.get("entries"), dict)
        ):
            return {}
        return {k: v for k, v in data["entries"].items() if isinstance(k, str) and isinstance(v, dict)}

    def _save_index(self, seen: dict[str, dict], roots: list[Path]) -> None:
        with _index_lock:
            # keep entries of other libraries sharing this cache folder (other roots)
            others = {k: v for k, v in self._load_index().items() if not _under(k, roots)}
            entries = {**others, **seen}
            while len(entries) > MAX_INDEX_ENTRIES:
                entries.pop(next(iter(entries)))
            data = {"version": INDEX_VERSION, "schema": _schema_fingerprint(), "entries": entries}
            write_cache_json(self.index_file, data)

    def _known_sha256(self) -> dict[str, dict]:
        # The sha256 cache is read once per scan (Sha256Cache.get would read it once per file).
        return Sha256Cache(self.cache_dir)._load()


def _under(key: str, roots: list[Path]) -> bool:
    return any(Path(key).is_relative_to(r) for r in roots)


def _entry_valid(entry: dict, st: os.stat_result) -> bool:
    if entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
        return False
    return "error" not in entry or entry.get("ctime_ns") == st.st_ctime_ns


def _entry_info(entry: dict) -> LoraInfo | None:
    raw = entry.get("info")
    if not isinstance(raw, dict):
        return None
    try:
        return LoraInfo.model_validate(raw)
    except PydanticValidationError:
        return None


def _sha_from(known: dict[str, dict], key: str, st: os.stat_result) -> str | None:
    entry = known.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    return None


def _os_error(path: Path, exc: OSError) -> str:
    return (
        f"The LoRA file {path} cannot be read ({exc.strerror or type(exc).__name__}); check its permissions."
    )
