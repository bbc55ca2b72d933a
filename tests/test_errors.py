"""Error sentences as the browser shows them: no absolute server path, files named relative to their folder."""

from __future__ import annotations

from pathlib import Path

from studio.errors import without_server_paths


def test_files_are_named_relative_to_their_folder_and_folders_by_their_name():
    folders = [(Path("/srv/app/loras"), "loras"), (Path("/srv/app/.studio-cache/demo-loras"), "demo-loras")]
    text = (
        "The LoRA file '/srv/app/loras/sub/style.safetensors' was not found in the LoRA folders "
        "(/srv/app/loras, /srv/app/.studio-cache/demo-loras)."
    )
    assert without_server_paths(text, folders) == (
        "The LoRA file 'sub/style.safetensors' was not found in the LoRA folders (loras, demo-loras)."
    )


def test_the_longest_folder_wins_and_a_sibling_with_a_longer_name_is_not_cut():
    folders = [(Path("/srv/app"), "."), (Path("/srv/app/loras"), "loras")]
    assert without_server_paths("/srv/app/loras/a.safetensors", folders) == "a.safetensors"
    assert without_server_paths("/srv/app/models/x/model_index.json", folders) == "models/x/model_index.json"
    assert without_server_paths("in /srv/app/loras2/b.safetensors", folders) == "in loras2/b.safetensors"


def test_other_absolute_paths_keep_only_their_last_part():
    text = "Downloaded to /root/.cache/huggingface/hub/models--a--b/snapshots/0123abc/x.safetensors."
    assert without_server_paths(text) == "Downloaded to x.safetensors."
    assert (
        without_server_paths("cannot read '/tmp/pytest-1/loras/' (EACCES)") == "cannot read 'loras' (EACCES)"
    )


def test_text_without_server_paths_is_unchanged():
    for text in (
        "https://huggingface.co/owner/repo/resolve/main/lora.safetensors",
        "owner/repo: sub/dir/file.safetensors",
        "weights 1.0/0.5, high/low pair, 4/8 steps, ./relative/path and ~/home-relative/file",
        "python -m studio hub download owner/repo a/b.safetensors",
    ):
        assert without_server_paths(text) == text
