"""The app's scene queue: a scene file on disk that the Batch tab edits, so it survives a restart.

The queue lives in one folder (``<outputs>/batch`` by default): ``scenes.json`` (an ordinary
scene file, written atomically after every edit), ``images/`` (each start image once, named by
its content) and ``renders/`` (the batch's output folder, with its state, so a run that
was interrupted — or the app restarted — goes on where it stopped). Export gives a zip with
``scenes.json`` and ``images/``; import takes such a zip or a scene file whose images exist.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from pydantic import ValidationError as PydanticValidationError

from studio.errors import ValidationError
from studio.media.files import save_png_atomic, write_json_atomic
from studio.media.images import image_sha256
from studio.stack.schema import MODEL_SETTING_FIELDS, RenderSettings, Stack
from studio.workflows.batch.jobs import Batch
from studio.workflows.batch.scenes import (
    MAX_FILE_BYTES,
    Scene,
    SceneFile,
    clean_message,
    items_from_stack,
    parse_scene_file,
    resolve_scenes,
)
from studio.workflows.batch.state import BatchState, StateFile
from studio.workflows.presets.schema import PresetSettings
from studio.workflows.presets.store import PresetStore

__all__ = ["QUEUE_FOLDER", "SceneQueue", "state_rows"]

QUEUE_FOLDER = "batch"
MAX_ZIP_BYTES = 512 * 1024 * 1024


class SceneQueue:
    """The queue in ``folder``; every method that changes it writes ``scenes.json`` and returns the new file."""

    def __init__(self, folder: str | Path, roots: Sequence[Path] = ()) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "scenes.json"
        self.images = self.folder / "images"
        self.renders = self.folder / "renders"
        self.roots = [Path(r) for r in roots]

    @classmethod
    def for_settings(cls, settings) -> SceneQueue:
        return cls(Path(settings.outputs_dir) / QUEUE_FOLDER, settings.resolved_lora_dirs())

    # ------------------------------------------------------------------ reading and writing
    def load(self) -> SceneFile:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return SceneFile()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"The scene queue {self.path} cannot be read ({exc}).") from None
        return parse_scene_file(text, what=f"scene queue {self.path}")

    def save(self, scene_file: SceneFile) -> SceneFile:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, scene_file.to_dict(), overwrite=True)
        return scene_file

    def _changed(self, scenes: list[Scene], base: SceneFile | None = None) -> SceneFile:
        base = base or self.load()
        data = {**base.to_dict(), "scenes": [s.model_dump(mode="json", exclude_none=True) for s in scenes]}
        return self.save(parse_scene_file(data, what="scene queue"))

    def _scene(self, scenes: list[Scene], index: int) -> Scene:
        if not 0 <= index < len(scenes):
            raise ValidationError("That scene is no longer in the queue; refresh the Batch tab.")
        return scenes[index]

    # ------------------------------------------------------------------ edits
    def _free_name(self, scenes: list[Scene], wanted: str) -> str:
        taken = {s.name.casefold() for s in scenes}
        if wanted.casefold() not in taken:
            return wanted
        n = 2
        while f"{wanted} ({n})".casefold() in taken:
            n += 1
        return f"{wanted} ({n})"

    def _store_image(self, image: Image.Image) -> str:
        self.images.mkdir(parents=True, exist_ok=True)
        name = f"{image_sha256(image)[:16]}.png"
        if not (self.images / name).exists():
            with contextlib.suppress(FileExistsError):
                save_png_atomic(image, self.images / name)
        return f"images/{name}"

    def scene_from_editor(
        self, image: Image.Image, settings: RenderSettings, stack: Stack, name: str | None = None
    ) -> Scene:
        values = {k: getattr(settings, k) for k in MODEL_SETTING_FIELDS if getattr(settings, k) is not None}
        return Scene(
            name=name or settings.prompt[:40].strip() or "scene",
            image=self._store_image(image),
            prompt=settings.prompt,
            loras=items_from_stack(stack, self.roots),
            settings=PresetSettings(**values),
            seed=settings.seed,
        )

    def add(
        self, image: Image.Image, settings: RenderSettings, stack: Stack, name: str | None = None
    ) -> SceneFile:
        current = self.load()
        scenes = list(current.scenes)
        scene = self.scene_from_editor(image, settings, stack, name)
        scenes.append(scene.model_copy(update={"name": self._free_name(scenes, scene.name)}))
        return self._changed(scenes, current)

    def replace_from_editor(
        self, index: int, image: Image.Image, settings: RenderSettings, stack: Stack
    ) -> SceneFile:
        """Scene ``index`` takes the editor's image, prompt, settings and stack (it keeps its name and repeat)."""
        current = self.load()
        scenes = list(current.scenes)
        old = self._scene(scenes, index)
        new = self.scene_from_editor(image, settings, stack, old.name)
        scenes[index] = new.model_copy(update={"repeat": old.repeat})
        return self._changed(scenes, current)

    def edit(self, index: int, **changes: Any) -> SceneFile:
        """Change fields of scene ``index`` (name, prompt, seed, repeat, ...), validated like the file."""
        current = self.load()
        scenes = list(current.scenes)
        scene = self._scene(scenes, index)
        if "name" in changes:
            others = scenes[:index] + scenes[index + 1 :]
            if any(s.name.casefold() == str(changes["name"]).strip().casefold() for s in others):
                raise ValidationError(f"Another scene is named {changes['name']!r}; choose another name.")
        data = {**scene.model_dump(mode="json", exclude_none=True), **changes}
        scenes[index] = _scene_from(data, index, scene.name)
        return self._changed(scenes, current)

    def move(self, index: int, delta: int) -> SceneFile:
        current = self.load()
        scenes = list(current.scenes)
        self._scene(scenes, index)
        j = max(0, min(len(scenes) - 1, index + delta))
        scenes.insert(j, scenes.pop(index))
        return self._changed(scenes, current)

    def duplicate(self, index: int) -> SceneFile:
        current = self.load()
        scenes = list(current.scenes)
        scene = self._scene(scenes, index)
        copy = scene.model_copy(update={"name": self._free_name(scenes, f"{scene.name} copy")})
        scenes.insert(index + 1, copy)
        return self._changed(scenes, current)

    def remove(self, index: int) -> SceneFile:
        current = self.load()
        scenes = list(current.scenes)
        self._scene(scenes, index)
        del scenes[index]
        return self._changed(scenes, current)

    def clear(self) -> SceneFile:
        return self.save(SceneFile())

    # ------------------------------------------------------------------ running
    def batch(
        self, *, model_defaults: dict[str, Any], presets: PresetStore | None = None, model: str | None = None
    ) -> Batch:
        return resolve_scenes(
            self.load(),
            self.folder,
            model_defaults=model_defaults,
            roots=[*self.roots, self.folder.resolve()],
            presets=presets,
            model=model,
            source=self.path,
        )

    def state(self) -> BatchState | None:
        try:
            return StateFile.read(self.renders)
        except ValidationError:
            return None

    # ------------------------------------------------------------------ import / export
    def export_zip(self, dest: str | Path) -> Path:
        """``dest`` (a new .zip): ``scenes.json`` and the images it names."""
        dest = Path(dest)
        scene_file = self.load()
        if not scene_file.scenes:
            raise ValidationError("The queue is empty; add scenes before exporting it.")
        if dest.exists():
            raise ValidationError(f"{dest} already exists; choose another name.")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("scenes.json", scene_file.to_json())
            for image in dict.fromkeys(s.image for s in scene_file.scenes):
                path = self.folder / image
                if path.is_file():
                    archive.write(path, image)
        tmp = dest.with_name(f".{dest.name}.partial")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(dest)
        return dest

    def import_file(self, path: str | Path, *, replace: bool = False) -> SceneFile:
        """Add the scenes of a zip (``scenes.json`` + ``images/``) or a scene file to the queue (or replace it)."""
        path = Path(path)
        if path.suffix.lower() == ".zip":
            incoming, images = self._read_zip(path)
        else:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValidationError(f"{path.name} is too large to be a scene file.")
            incoming = parse_scene_file(
                path.read_text(encoding="utf-8", errors="replace"), what=f"scene file {path.name}"
            )
            images = {}
            for i, scene in enumerate(incoming.scenes):
                source = Path(scene.image) if Path(scene.image).is_absolute() else path.parent / scene.image
                if not source.is_file():
                    raise ValidationError(
                        f"scene {i + 1} ({scene.name!r}): image: {scene.image} is not next to the uploaded file; "
                        "import a zip exported from the Batch tab (scenes.json with images/), or use absolute paths."
                    )
                images[scene.image] = source.read_bytes()
        stored: dict[str, str] = {}
        for name, data in images.items():
            try:
                image = Image.open(io.BytesIO(data))
                image.load()
            except Exception:
                raise ValidationError(f"{name} in the import is not a picture the studio can read.") from None
            stored[name] = self._store_image(image.convert("RGB") if image.mode != "RGB" else image)
        current = SceneFile() if replace else self.load()
        scenes = list(current.scenes)
        for scene in incoming.scenes:
            scenes.append(
                scene.model_copy(
                    update={"name": self._free_name(scenes, scene.name), "image": stored[scene.image]}
                )
            )
        base = current if not replace else incoming.model_copy(update={"scenes": []})
        return self._changed(scenes, base)

    def _read_zip(self, path: Path) -> tuple[SceneFile, dict[str, bytes]]:
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise ValidationError(
                f"{path.name} is not a zip file; import a zip exported from the Batch tab."
            ) from None
        with archive:
            infos = {info.filename: info for info in archive.infolist()}
            if "scenes.json" not in infos:
                raise ValidationError(
                    f"{path.name} holds no scenes.json; import a zip exported from the Batch tab."
                )
            if sum(i.file_size for i in infos.values()) > MAX_ZIP_BYTES:
                raise ValidationError(
                    f"{path.name} unpacks to more than {MAX_ZIP_BYTES // 2**20} MB; it is refused."
                )
            incoming = parse_scene_file(
                archive.read("scenes.json").decode("utf-8", errors="replace"), what="scenes.json"
            )
            images = {}
            for i, scene in enumerate(incoming.scenes):
                name = PurePosixPath(scene.image)
                if name.is_absolute() or ".." in name.parts or scene.image not in infos:
                    raise ValidationError(
                        f"scene {i + 1} ({scene.name!r}): image: {scene.image} is not in the zip."
                    )
                images[scene.image] = archive.read(scene.image)
        return incoming, images


def _scene_from(data: dict[str, Any], index: int, name: str) -> Scene:
    try:
        return Scene.model_validate(data)
    except PydanticValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {clean_message(e)}" for e in exc.errors()]
        raise ValidationError(f"scene {index + 1} ({name!r}): " + "; ".join(problems) + ".") from None


def state_rows(scene_file: SceneFile, state: BatchState | None) -> list[list[Any]]:
    """One row per scene for the queue table: #, name, prompt, LoRAs, seed, repeat, status."""
    status: dict[str, list[str]] = {}
    if state is not None:
        for job in state.jobs:
            status.setdefault(job.scene, []).append(job.status)
    rows = []
    for i, scene in enumerate(scene_file.scenes):
        loras = ", ".join(
            f"{item.get('name') or PurePosixPath(str(item.get('path', '?'))).stem} {item.get('weight', 1.0):g}"
            for item in scene.loras or []
        ) or (f"preset {scene.preset}" if scene.preset else "no LoRAs")
        states = status.get(scene.name, [])
        text = "not run" if not states else ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
        prompt = scene.prompt if len(scene.prompt) <= 60 else scene.prompt[:59] + "…"
        rows.append(
            [
                i + 1,
                scene.name,
                prompt,
                loras,
                "random" if scene.seed is None else scene.seed,
                scene.repeat,
                text,
            ]
        )
    return rows
