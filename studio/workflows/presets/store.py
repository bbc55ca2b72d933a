"""The preset store: the user's presets in one folder (atomic, never overwriting without
``overwrite=True``) next to the read-only shipped presets in ``presets/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from studio.errors import OutputError, ValidationError
from studio.hub.resolve import HubContext
from studio.loras.sources import inside_roots
from studio.media.files import write_json_atomic
from studio.stack.schema import (
    RenderSettings,
    Stack,
)
from studio.workflows.presets.errors import PresetExists, PresetNotFound, PresetReadOnly
from studio.workflows.presets.formats import ImportResult, preset_from_data, to_guide_list
from studio.workflows.presets.lset import RunSteps
from studio.workflows.presets.schema import (
    SHIPPED_DIR,
    STALE_PARTIAL_S,
    Preset,
    PresetEntry,
    PresetSettings,
    Slot,
    load_preset,
    parse_preset,
    read_preset_text,
)

# ----------------------------------------------------------------------------- store


_SLUG_MAX = 60


def slugify(name: str) -> str:
    """A safe file stem for a preset name: lowercase ASCII letters, digits and dashes."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:_SLUG_MAX].rstrip("-")
    if not text:
        text = "preset-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return text


@dataclass(frozen=True)
class PresetInfo:
    """One preset as a list shows it; ``error`` is set (and the rest partly empty) for a broken file."""

    name: str
    file: Path
    shipped: bool
    description: str = ""
    model: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    slots: int = 0
    error: str | None = None

    @property
    def label(self) -> str:
        suffix = " (shipped)" if self.shipped else ""
        return f"{self.name}{suffix}" if self.error is None else f"{self.file.name} (broken)"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": str(self.file),
            "shipped": self.shipped,
            "description": self.description,
            "model": self.model,
            "entries": self.entries,
            "slots": self.slots,
            "error": self.error,
        }


def entry_summary(entry: PresetEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "role": entry.role,
        "slot": entry.is_slot,
        "high": entry.high.label() if entry.high else None,
        "low": entry.low.label() if entry.low else None,
        "weight_high": entry.weight_high,
        "weight_low": entry.weight_low,
        "enabled": entry.enabled,
    }


class PresetStore:
    """The user's presets (one JSON file each in ``user_dir``) and the shipped ones (read-only).

    Every UI action is one call: :meth:`list`, :meth:`load`, :meth:`save` (raises
    :class:`PresetExists` unless ``overwrite=True``), :meth:`rename`, :meth:`duplicate`,
    :meth:`delete`, :meth:`import_file`, :meth:`export`. File names are derived from the
    names (:func:`slugify`) and always lie directly in ``user_dir``. ``roots`` are the LoRA
    folders that local paths are checked against.
    """

    def __init__(
        self,
        user_dir: str | Path,
        shipped_dir: str | Path | None = SHIPPED_DIR,
        *,
        roots: Sequence[Path] = (),
        hub: HubContext | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.user_dir = Path(user_dir).expanduser()
        self.shipped_dir = Path(shipped_dir).expanduser() if shipped_dir is not None else None
        self.roots = [Path(r) for r in roots]
        self.hub = hub or HubContext(cache_dir=cache_dir)  # resolves Hub repo paths of imported lists
        self.sweep_partials()

    @classmethod
    def for_settings(
        cls, settings, user_dir: str | Path | None = None, *, hub: HubContext | None = None
    ) -> PresetStore:
        """The store for a :class:`~studio.settings.Settings` (user presets in ``settings.presets_dir``).

        ``hub`` resolves Hub repo paths in imported LoRA lists (default: a client on the settings' cache).
        """
        return cls(
            user_dir or settings.presets_dir,
            SHIPPED_DIR,
            roots=settings.resolved_lora_dirs(),
            hub=hub,
            cache_dir=settings.cache_dir,
        )

    # ------------------------------------------------------------------ housekeeping
    def sweep_partials(self, max_age_s: float = STALE_PARTIAL_S) -> list[Path]:
        """Remove temporary files left in the user folder by a save that crashed (older than ``max_age_s``)."""
        removed = []
        if not self.user_dir.is_dir():
            return removed
        now = time.time()
        for path in self.user_dir.glob(".*.json.partial-*"):
            with contextlib.suppress(OSError):
                if now - path.lstat().st_mtime >= max_age_s:
                    path.unlink()
                    removed.append(path)
        return removed

    def _user_file(self, name: str) -> Path:
        path = self.user_dir / f"{slugify(name)}.json"
        if path.parent != self.user_dir:  # cannot happen with slugify; kept as a guard
            raise ValidationError("That preset name cannot be used as a file name; choose another.")
        return path

    def _files(self) -> Iterator[tuple[Path, bool]]:
        if self.shipped_dir is not None and self.shipped_dir.is_dir():
            for path in sorted(self.shipped_dir.glob("*.json")):
                yield path, True
        if self.user_dir.is_dir():
            for path in sorted(self.user_dir.glob("*.json")):
                if not path.name.startswith("."):
                    yield path, False

    def _read(self, path: Path) -> Preset:
        return load_preset(path, roots=self.roots)

    # ------------------------------------------------------------------ listing
    def list(self) -> list[PresetInfo]:
        """Every preset, shipped first, then the user's (by name). Broken files are listed with their error."""
        shipped, user = [], []
        for path, is_shipped in self._files():
            try:
                preset = self._read(path)
            except ValidationError as exc:
                info = PresetInfo(name=path.stem, file=path, shipped=is_shipped, error=str(exc))
            else:
                info = PresetInfo(
                    name=preset.name,
                    file=path,
                    shipped=is_shipped,
                    description=preset.description,
                    model=preset.model,
                    entries=[entry_summary(e) for e in preset.entries],
                    slots=sum(1 for e in preset.entries if e.is_slot),
                )
            (shipped if is_shipped else user).append(info)
        user.sort(key=lambda i: i.name.casefold())
        return shipped + user

    def names(self) -> list[str]:
        return [info.name for info in self.list() if info.error is None]

    def _find(self, name: str) -> tuple[Path, bool, Preset] | None:
        wanted = " ".join(name.split()).casefold()
        by_slug = None
        for path, is_shipped in self._files():
            try:
                preset = self._read(path)
            except ValidationError:
                continue
            if preset.name.casefold() == wanted:
                return path, is_shipped, preset
            if by_slug is None and path.stem == slugify(name) and not is_shipped:
                by_slug = (path, is_shipped, preset)
        return by_slug

    def is_shipped(self, name: str) -> bool:
        found = self._find(name)
        return found is not None and found[1]

    # ------------------------------------------------------------------ reading
    def load(self, name_or_file: str | Path) -> Preset:
        """A preset by name, or by the path of a ``.json`` file inside the store's folders."""
        text = str(name_or_file)
        if isinstance(name_or_file, Path) or text.lower().endswith(".json"):
            path = Path(name_or_file).expanduser()
            folders = [self.user_dir, *([self.shipped_dir] if self.shipped_dir is not None else [])]
            candidates = [path] if path.is_absolute() else [path, *(folder / path for folder in folders)]
            for candidate in candidates:
                if candidate.is_file() and inside_roots(candidate, folders):
                    return self._read(candidate)
            raise PresetNotFound(
                f"There is no preset file {text} among the presets; import it first (or give its name)."
            )
        found = self._find(text)
        if found is None:
            raise PresetNotFound(f"There is no preset named {text!r}; choose one from the preset list.")
        return found[2]

    def load_file(self, path: str | Path) -> Preset:
        """A preset file from anywhere (the CLI's ``--preset FILE``), without adding it to the store."""
        return self._read(Path(path).expanduser())

    # ------------------------------------------------------------------ writing
    def _check_writable_name(self, name: str) -> None:
        found = self._find(name)
        if found is not None and found[1]:
            raise PresetReadOnly(
                f"{found[2].name!r} is a shipped preset and cannot be replaced; save under another name."
            )

    def save(self, preset: Preset, *, overwrite: bool = False) -> Path:
        """Write ``preset`` to the user folder atomically and return its file.

        Raises :class:`PresetExists` when a preset of that name (or file name) exists and
        ``overwrite`` is False, :class:`PresetReadOnly` for a shipped preset's name. Local
        paths are checked against the LoRA folders first; nothing is written on an error.
        """
        preset = parse_preset(preset.to_dict(), roots=self.roots, what=f"preset {preset.name!r}")
        self._check_writable_name(preset.name)
        path = self._user_file(preset.name)
        found = self._find(preset.name)
        if not overwrite:
            if found is not None:
                raise PresetExists(found[2].name, found[0])
            if path.exists():
                raise PresetExists(self._name_in(path) or preset.name, path)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        try:
            write_json_atomic(path, preset.to_dict(), overwrite=overwrite)
        except OutputError as exc:
            if not overwrite and path.exists():
                raise PresetExists(preset.name, path) from None
            raise ValidationError(f"The preset {preset.name!r} could not be saved: {exc}") from None
        if found is not None and found[0] != path and not found[1]:
            # The replaced preset lived in a differently named file (hand-made): remove it, so
            # one name is one preset.
            with contextlib.suppress(FileNotFoundError):
                found[0].unlink()
        return path

    def _name_in(self, path: Path) -> str | None:
        try:
            return self._read(path).name
        except ValidationError:
            return None

    def save_stack(
        self,
        name: str,
        stack: Stack,
        *,
        settings: RenderSettings | PresetSettings | None = None,
        description: str = "",
        model: str | None = None,
        slots: Sequence[Slot] = (),
        overwrite: bool = False,
    ) -> Path:
        """The editor's "Save preset": one call from the stack (and optional settings) to a file."""
        preset = Preset.from_stack(
            name,
            stack,
            roots=self.roots,
            settings=settings,
            description=description,
            model=model,
            slots=slots,
        )
        return self.save(preset, overwrite=overwrite)

    def _user_preset(self, name: str) -> tuple[Path, Preset]:
        found = self._find(name)
        if found is None:
            raise PresetNotFound(f"There is no preset named {name!r}; choose one from the preset list.")
        path, is_shipped, preset = found
        if is_shipped:
            raise PresetReadOnly(
                f"{preset.name!r} is a shipped preset and cannot be changed; duplicate it to make your own copy."
            )
        return path, preset

    def rename(self, name: str, new_name: str, *, overwrite: bool = False) -> Path:
        """Give a user preset another name (and file). The old file goes only after the new one is written."""
        path, preset = self._user_preset(name)
        renamed = preset.renamed(new_name)
        new_path = self._user_file(renamed.name)
        if new_path == path:  # same file (e.g. only the case changed): replace in place
            self._check_writable_name(renamed.name)
            write_json_atomic(
                path, parse_preset(renamed.to_dict(), roots=self.roots).to_dict(), overwrite=True
            )
            return path
        written = self.save(renamed, overwrite=overwrite)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return written

    def duplicate(self, name: str, new_name: str | None = None) -> Path:
        """A user copy of any preset (shipped ones included), named ``new_name`` or "NAME (copy)"."""
        found = self._find(name)
        if found is None:
            raise PresetNotFound(f"There is no preset named {name!r}; choose one from the preset list.")
        preset = found[2]
        if new_name is None:
            taken = {n.casefold() for n in self.names()}
            base = f"{preset.name} (copy)"
            new_name, n = base, 2
            while new_name.casefold() in taken or self._user_file(new_name).exists():
                new_name, n = f"{preset.name} (copy {n})", n + 1
        return self.save(preset.renamed(new_name))

    def delete(self, name: str) -> Path:
        """Delete a user preset (shipped presets are read-only); returns the removed file."""
        path, _ = self._user_preset(name)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ValidationError(
                f"The preset file {path.name} could not be deleted ({exc.strerror or exc})."
            ) from None
        return path

    def import_file(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        overwrite: bool = False,
        run: RunSteps | None = None,
    ) -> ImportResult:
        """Import an uploaded file (our schema, the guide's list, a render sidecar or a Wan2GP ``.lset``).

        The file is validated fully before anything is written; an existing preset of the
        same name raises :class:`PresetExists` unless ``overwrite``. ``run``: the step count and
        expert split that Wan2GP's per-step lists are laid out for.
        """
        path = Path(path).expanduser()
        text = read_preset_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"The file {path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
            ) from None
        default_name = " ".join(re.sub(r"[_-]+", " ", path.stem).split()) or "Imported preset"
        try:
            result = preset_from_data(
                data, roots=self.roots, default_name=default_name, name=name, hub=self.hub, run=run
            )
        except ValidationError as exc:
            raise ValidationError(f"{path.name}: {exc}") from None
        self.save(result.preset, overwrite=overwrite)
        return result

    def export(
        self,
        name: str,
        dest: str | Path | None = None,
        *,
        overwrite: bool = False,
        format: Literal["preset", "guide"] = "preset",
    ) -> Path:
        """The file to download for preset ``name``.

        Without ``dest`` this is the preset's own file (user or shipped). With ``dest`` (a
        folder, or a ``.json`` file name) a normalised copy is written there atomically,
        never over an existing file unless ``overwrite``. ``format="guide"`` writes the guide's
        list form instead (:func:`~studio.workflows.presets.formats.to_guide_list`).
        """
        found = self._find(name)
        if found is None:
            raise PresetNotFound(f"There is no preset named {name!r}; choose one from the preset list.")
        path, _, preset = found
        if dest is None and format == "preset":
            return path
        if dest is None:
            raise ValidationError("Name the .json file (or folder) to write the LoRA list to.")
        dest = Path(dest).expanduser()
        suffix = "" if format == "preset" else "-loras"
        target = dest / f"{slugify(preset.name)}{suffix}.json" if dest.is_dir() else dest
        if target.suffix.lower() != ".json":
            raise ValidationError(f"Export to a .json file; {target.name} is not one.")
        if not target.parent.is_dir():
            raise ValidationError(f"The folder {target.parent} does not exist; create it or choose another.")
        data: Any = preset.to_dict() if format == "preset" else to_guide_list(preset)[0]
        try:
            return write_json_atomic(target, data, overwrite=overwrite)
        except OutputError as exc:
            raise ValidationError(str(exc)) from None
