"""The local LoRA library: recursive scan of several roots, the on-disk index, pairs, stack entries."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from studio.errors import LoraFileError
from studio.loras.hashing import file_sha256
from studio.loras.library import INDEX_FILE_NAME, INDEX_VERSION, LibraryItem, LoraLibrary
from studio.loras.synthetic import training_metadata, write_layout, write_lora
from studio.stack.schema import Stack


def _write(folder: Path, name: str, config: dict, **kw) -> Path:
    return write_layout(folder / name, config, kw.pop("layout", "peft"), rank=2, **kw)


def _by_label(items: list[LibraryItem]) -> dict[str, LibraryItem]:
    return {i.label: i for i in items}


def _overwrite_keeping_stat(path: Path, data: bytes) -> None:
    """Replace a file's bytes by ``data`` (same length) and put its mtime back: the index can't tell."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.fixture
def roots(tmp_path, config):
    a, b = tmp_path / "loras", tmp_path / "more"
    _write(a, "style.safetensors", config)
    _write(a / "motion" / "deep", "orbit.safetensors", config, layout="original", alpha=2.0)
    _write(a, ".hidden.safetensors", config)
    _write(a / ".cache", "inside_hidden_dir.safetensors", config)
    (a / "notes.txt").write_text("not a LoRA")
    _write(b, "speed_high_noise.safetensors", config, layout="lightx2v")
    _write(b, "speed_low_noise.safetensors", config, layout="lightx2v")
    outside = _write(tmp_path / "elsewhere", "outside.safetensors", config)
    (b / "link_out.safetensors").symlink_to(outside)
    return [a, b]


def test_scan_several_roots_recursively(tmp_path, roots):
    library = LoraLibrary(roots, tmp_path / "cache")
    items = library.scan()
    labels = [i.label for i in items]
    assert labels == ["orbit", "style", "speed"]  # root order, then relative path
    by = _by_label(items)
    assert by["orbit"].kind == "single" and by["orbit"].rel_path == "motion/deep/orbit.safetensors"
    assert by["orbit"].root == str(roots[0].resolve())
    assert by["orbit"].info.layout == "original" and by["orbit"].info.alpha == 2.0
    assert by["orbit"].error is None and by["orbit"].expert is None
    pair = by["speed"]
    assert pair.kind == "pair" and pair.path is None and pair.info is None
    assert pair.high_rel_path == "speed_high_noise.safetensors"
    assert pair.low_rel_path == "speed_low_noise.safetensors"
    assert (pair.high_info.expert_hint, pair.low_info.expert_hint) == ("high", "low")
    assert pair.high_info.pair_file == "speed_low_noise.safetensors"
    assert pair.paths == [pair.high_path, pair.low_path]
    # JSON-serialisable, and the same items come back from JSON
    data = json.loads(json.dumps([i.model_dump(mode="json") for i in items]))
    assert [LibraryItem.model_validate(d) for d in data] == items
    assert library.items == items
    assert library.get(pair.id) == pair
    with pytest.raises(LoraFileError, match="no longer in the library"):
        library.get("0" * 16)


def test_rescan_of_unchanged_files_reads_no_file(tmp_path, config, roots):
    cache = tmp_path / "cache"
    first = LoraLibrary(roots, cache).scan()
    index = json.loads((cache / INDEX_FILE_NAME).read_text())
    assert index["version"] == INDEX_VERSION == 2 and len(index["entries"]) == 4
    style = roots[0] / "style.safetensors"
    entry = index["entries"][str(style.resolve())]
    assert entry["size"] == style.stat().st_size and entry["mtime_ns"] == style.stat().st_mtime_ns
    assert entry["info"]["layout"] == "diffusers"

    # Every file's bytes are replaced by zeros (same size, same mtime): reading any header now fails,
    # so a rescan that still knows every file has opened none of them.
    for item in first:
        for path in item.paths:
            _overwrite_keeping_stat(Path(path), b"\0" * Path(path).stat().st_size)
    index_mtime = (cache / INDEX_FILE_NAME).stat().st_mtime_ns
    again = LoraLibrary(roots, cache).scan()  # a new instance: only the file on disk is shared
    assert again == first
    assert all(i.error is None for i in again)
    assert (cache / INDEX_FILE_NAME).stat().st_mtime_ns == index_mtime  # nothing to write

    # refresh() ignores the index and reads every header again
    refreshed = LoraLibrary(roots, cache).refresh()
    assert [i.label for i in refreshed] == ["orbit", "style", "speed"]
    assert all(i.error and "is not a valid safetensors file" in i.error for i in refreshed)
    assert [i.id for i in refreshed] == [i.id for i in first]  # ids follow the paths


def test_changed_added_and_deleted_files_are_noticed(tmp_path, config, roots):
    cache = tmp_path / "cache"
    library = LoraLibrary(roots, cache)
    library.scan()
    style = roots[0] / "style.safetensors"
    _write(roots[0], "style.safetensors", config, layout="musubi")  # new content, new size
    os.utime(style, ns=(style.stat().st_atime_ns, style.stat().st_mtime_ns + 10**9))
    (roots[0] / "motion" / "deep" / "orbit.safetensors").unlink()
    _write(roots[1], "new.safetensors", config)
    items = _by_label(library.scan())
    assert set(items) == {"style", "speed", "new"}
    assert items["style"].info.layout == "musubi"
    entries = json.loads((cache / INDEX_FILE_NAME).read_text())["entries"]
    assert len(entries) == 4 and not any("orbit" in k for k in entries)


def test_unreadable_and_corrupt_files_are_items_with_an_error(tmp_path, config, tools):
    root = tmp_path / "loras"
    _write(root, "good.safetensors", config)
    tools.write_raw(root / "bad_json.safetensors", b"{not json")
    (root / "short.safetensors").write_bytes(b"\x01\x02")
    (root / "pickle.safetensors").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    os.mkfifo(root / "fifo.safetensors")
    write_lora(
        root / "sd15.safetensors", {"lora_te_text_model_encoder_layers_0.lora_down.weight": torch.zeros(2, 4)}
    )
    cache = tmp_path / "cache"
    items = _by_label(LoraLibrary([root], cache).scan())
    assert items["good"].error is None
    for label, words in [
        ("bad_json", "is not valid JSON"),
        ("short", "only 2 bytes long"),
        ("pickle", "pickle"),
        ("fifo", "not a regular file"),
    ]:
        assert items[label].info is None and words in items[label].error, label
        assert items[label].error.endswith(".")
        with pytest.raises(LoraFileError, match=words):
            items[label].to_stack_entry()
    assert items["sd15"].error is None and items["sd15"].info.layout == "unknown"  # readable, not Wan

    # the error is remembered, and forgotten once the file is fixed (new mtime)
    entries = json.loads((cache / INDEX_FILE_NAME).read_text())["entries"]
    assert "error" in entries[str((root / "bad_json.safetensors").resolve())]
    _write(root, "bad_json.safetensors", config)
    assert _by_label(LoraLibrary([root], cache).scan())["bad_json"].error is None


def test_corrupt_or_outdated_index_is_rebuilt(tmp_path, roots):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / INDEX_FILE_NAME).write_text("{broken")
    assert len(LoraLibrary(roots, cache).scan()) == 3
    data = json.loads((cache / INDEX_FILE_NAME).read_text())
    data["schema"] = "older"
    for entry in data["entries"].values():
        entry["info"]["layout"] = "loha"  # would show if the outdated index were used
    (cache / INDEX_FILE_NAME).write_text(json.dumps(data))
    assert {i.info.layout for i in LoraLibrary(roots, cache).scan() if i.info} == {"diffusers", "original"}
    assert not list(cache.glob("*.tmp"))  # atomic writes leave no temporary files


def test_two_libraries_share_one_cache_folder(tmp_path, roots):
    cache = tmp_path / "cache"
    LoraLibrary(roots[:1], cache).scan()
    LoraLibrary(roots[1:], cache).scan()
    entries = json.loads((cache / INDEX_FILE_NAME).read_text())["entries"]
    assert len(entries) == 4  # neither scan dropped the other's files


@pytest.mark.parametrize(
    ("high", "low", "label"),
    [
        ("dance_high_noise", "dance_low_noise", "dance"),
        (
            "Wan2.2-Lightning_I2V-A14B-4steps-lora_HIGH_fp16",
            "Wan2.2-Lightning_I2V-A14B-4steps-lora_LOW_fp16",
            "Wan2.2-Lightning_I2V-A14B-4steps-lora_fp16",
        ),
        ("spin_high", "spin_low", "spin"),
        ("twirlHighNoise", "twirlLowNoise", "twirl"),
        ("walk_H", "walk_L", "walk"),
        ("walk_H_v1", "walk_L_v1", "walk_v1"),
        ("jump-HN", "jump-LN", "jump"),
        ("HIGH-zoom", "LOW-zoom", "zoom"),
        ("run", "run_low", "run"),
        ("fly_high", "fly", "fly"),
    ],
)
def test_pairs_by_name(tmp_path, config, high, low, label):
    root = tmp_path / "loras"
    _write(root, f"{high}.safetensors", config)
    _write(root, f"{low}.safetensors", config)
    (item,) = LoraLibrary([root], tmp_path / "cache").scan()
    assert item.kind == "pair" and item.label == label
    assert Path(item.high_path).stem == high and Path(item.low_path).stem == low


def test_pairs_from_metadata_and_what_is_not_a_pair(tmp_path, config):
    root = tmp_path / "loras"
    # two files whose names don't say it, but whose training metadata does
    _write(
        root / "spin",
        "spin_a.safetensors",
        config,
        metadata=training_metadata(min_timestep=875, max_timestep=1000),
    )
    _write(
        root / "spin",
        "spin_b.safetensors",
        config,
        metadata=training_metadata(min_timestep=0, max_timestep=875),
    )
    # names that look alike but are not high/low halves
    _write(root, "highres_detail.safetensors", config)
    _write(root, "lowres_detail.safetensors", config)
    _write(root, "slow.safetensors", config)
    _write(root, "s.safetensors", config)
    # halves in different folders are not a pair; a lone half is a single for one expert
    _write(root / "x", "solo_high_noise.safetensors", config)
    _write(root / "y", "solo_low_noise.safetensors", config)
    # three halves: the two whose names match pair up, the third stays single
    _write(root, "style_high.safetensors", config)
    _write(root, "style_low.safetensors", config)
    _write(root, "style.safetensors", config)
    items = LoraLibrary([root], tmp_path / "cache").scan()
    pairs = {i.label: i for i in items if i.kind == "pair"}
    singles = {i.rel_path: i for i in items if i.kind == "single"}
    assert set(pairs) == {"spin", "style"}
    assert Path(pairs["spin"].high_path).name == "spin_a.safetensors"
    assert pairs["spin"].high_info.expert_hint_source == "metadata"
    assert Path(pairs["style"].high_path).name == "style_high.safetensors"
    assert set(singles) == {
        "highres_detail.safetensors",
        "lowres_detail.safetensors",
        "slow.safetensors",
        "s.safetensors",
        "x/solo_high_noise.safetensors",
        "y/solo_low_noise.safetensors",
        "style.safetensors",
    }
    assert singles["x/solo_high_noise.safetensors"].expert == "high"
    assert singles["y/solo_low_noise.safetensors"].expert == "low"
    assert singles["style.safetensors"].expert is None
    assert singles["style.safetensors"].info.expert_hint is None  # not "high because style_low is there"


def test_metadata_pair_needs_the_same_model_size(tmp_path, config):
    from studio.loras.synthetic import WAN_1_3B_CONFIG

    root = tmp_path / "loras"
    _write(root, "a.safetensors", config, metadata=training_metadata(min_timestep=875))
    write_layout(
        root / "b.safetensors",
        WAN_1_3B_CONFIG,
        "peft",
        rank=1,
        blocks=[0],
        metadata=training_metadata(min_timestep=0, max_timestep=875),
    )
    assert [i.kind for i in LoraLibrary([root], tmp_path / "cache").scan()] == ["single", "single"]


def test_a_partner_that_disappears_is_noticed_although_the_file_is_unchanged(tmp_path, config):
    root = tmp_path / "loras"
    _write(root, "walk_H_v1.safetensors", config)
    _write(root, "walk_L_v1.safetensors", config)
    library = LoraLibrary([root], tmp_path / "cache")
    assert [i.kind for i in library.scan()] == ["pair"]
    (root / "walk_L_v1.safetensors").unlink()
    (item,) = library.scan()  # walk_H_v1's index entry says "high (sibling file)"; that is stale now
    assert item.kind == "single" and item.expert is None
    assert item.info.expert_hint is None and item.info.pair_file is None


def test_to_stack_entry(tmp_path, config):
    root = tmp_path / "loras"
    _write(root, "dance_HighNoise.safetensors", config)
    _write(root, "dance_LowNoise.safetensors", config)
    _write(root, "style.safetensors", config)
    _write(root, "speed_HIGH.safetensors", config)
    _write(root, "calm.safetensors", config, metadata={"studio.expert": "low"})
    by = _by_label(LoraLibrary([root], tmp_path / "cache").scan())

    pair = by["dance"].to_stack_entry(weight_high=3.0, weight_low=1.5)
    assert pair.is_pair and pair.name == "dance"
    assert pair.high.path == by["dance"].high_path and pair.low.path == by["dance"].low_path
    assert (pair.weight_high, pair.weight_low) == (3.0, 1.5)

    both = by["style"].to_stack_entry(0.8, 0.6)
    assert both.high == both.low and both.high.path == by["style"].path
    assert both.applies_to() == ["high", "low"] and (both.weight_high, both.weight_low) == (0.8, 0.6)

    high_only = by["speed_HIGH"].to_stack_entry(2.0, 2.0)
    assert high_only.low is None and high_only.weight_low == 0.0 and high_only.applies_to() == ["high"]
    low_only = by["calm"].to_stack_entry(2.0, 0.7)
    assert low_only.high is None and low_only.weight_high == 0.0 and low_only.weight_low == 0.7
    assert low_only.applies_to() == ["low"]

    stack = Stack(entries=[pair, both, high_only, low_only])
    assert Stack.from_json(stack.to_json()) == stack
    from studio.loras.sources import missing_files

    assert missing_files(stack, [root]) == []


def test_sha256_is_filled_in_when_known_or_asked_for(tmp_path, config):
    root = tmp_path / "loras"
    path = _write(root, "style.safetensors", config)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    (item,) = LoraLibrary([root], cache).scan()
    assert item.info.sha256 is None  # the first scan reads headers only
    file_sha256(path, cache_dir=cache)  # e.g. the engine hashed it while loading
    (item,) = LoraLibrary([root], cache).scan()
    assert item.info.sha256 == digest and item.to_stack_entry().high.sha256 == digest

    (item,) = LoraLibrary([root], tmp_path / "other-cache", hash_files=True).scan()
    assert item.info.sha256 == digest
