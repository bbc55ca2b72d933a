"""The Hub tab: search Wan LoRAs, inspect a repo's files remotely, download what fits.

Hub calls run in their own queue (``concurrency_id="hub"``), never the GPU's, so a slow
Hub does not hold up renders. A token typed here stays in the browser's widget and is
passed to each call: the studio never stores it.
"""

from __future__ import annotations

import html

import gradio as gr

from studio.errors import StudioError
from studio.hub.common import RepoFiles, RepoSummary
from studio.service import Studio
from studio.ui import handlers as h
from studio.ui.library_view import BADGE_TEXT, _size_text
from studio.ui.refs import EditorRefs

HUB_QUEUE = {"concurrency_id": "hub", "concurrency_limit": 4, "api_visibility": "private"}


def results_html(results: list[RepoSummary]) -> str:
    if not results:
        return "<div class='hub-empty'>No Wan LoRA repositories found; try other words or filters.</div>"
    e = html.escape
    rows = []
    for r in results:
        triggers = ", ".join(r.trigger_words) or "—"
        versions = ", ".join(f"Wan{v}" for v in r.wan_versions) or "?"
        tasks = ", ".join(t.upper() for t in r.tasks) or "?"
        rows.append(
            f"<tr><td><b>{e(r.repo_id)}</b>{' 🔒' if r.gated or r.private else ''}<br>"
            f"<span class='hub-summary'>{e((r.summary or '')[:240])}</span></td>"
            f"<td>{e(versions)} · {e(tasks)}</td><td>{r.downloads:,}</td><td>{r.likes:,}</td>"
            f"<td>{e((r.last_modified or '')[:10])}</td><td>{e(triggers)}</td></tr>"
        )
    head = "<tr><th>Repository</th><th>Model</th><th>Downloads</th><th>Likes</th><th>Updated</th><th>Trigger words</th></tr>"
    return f"<table class='hub-results'>{head}{''.join(rows)}</table>"


def files_html(listing: RepoFiles) -> str:
    e = html.escape
    rows = []
    for item in listing.items:
        level = item.compat.level if item.compat else "incompatible"
        reason = item.error or (item.compat.reason if item.compat else "")
        kind = (
            "high + low pair"
            if item.kind == "pair"
            else (f"{item.expert}-noise only" if item.expert else "both")
        )
        files = item.file or f"{item.high_file} + {item.low_file}"
        done = " · downloaded" if item.downloaded else ""
        rows.append(
            f"<tr><td><b>{e(item.label)}</b><br><span class='hub-files'>{e(files)}</span></td><td>{e(kind)}</td>"
            f"<td>{_size_text(item.size)}{done}</td><td><span class='lora-badge lora-badge-{level}'>"
            f"{BADGE_TEXT[level]}</span> <span class='hub-reason'>{e(reason)}</span></td></tr>"
        )
    notes = "".join(f"<li>{e(n)}</li>" for n in listing.notes)
    refused = "".join(f"<li>{e(n)}: a pickle file, never downloaded</li>" for n in listing.refused)
    extra = f"<ul>{notes}{refused}</ul>" if notes or refused else ""
    head = "<tr><th>LoRA</th><th>Experts</th><th>Size</th><th>On the loaded model</th></tr>"
    return (
        f"<div class='hub-commit'>{e(listing.repo)} at {e(listing.sha[:12])}</div>"
        f"<table class='hub-files-table'>{head}{''.join(rows)}</table>{extra}"
    )


def item_choice(item) -> tuple[str, str]:
    level = item.compat.level if item.compat else "incompatible"
    return f"{item.label} [{BADGE_TEXT[level]}]", item.id


def build_hub_tab(studio: Studio, refs: EditorRefs) -> None:
    listing_state = gr.State(None)  # the RepoFiles shown (JSON), so Download needs no second listing call
    with gr.Row():
        query = gr.Textbox(
            label="Search the Hugging Face Hub",
            placeholder="e.g. lightx2v, anime, orbit",
            scale=4,
            elem_id="hub-query",
        )
        wan = gr.Dropdown(
            [("Wan2.2", "2.2"), ("Wan2.1", "2.1"), ("any", "any")],
            value="2.2",
            label="Wan",
            scale=1,
            elem_id="hub-wan",
        )
        task = gr.Dropdown(
            [("I2V", "i2v"), ("T2V", "t2v"), ("any", "any")],
            value="any",
            label="Task",
            scale=1,
            elem_id="hub-task",
        )
        sort = gr.Dropdown(
            ["downloads", "likes", "updated"], value="downloads", label="Sort", scale=1, elem_id="hub-sort"
        )
        search_btn = gr.Button("Search", variant="primary", scale=1, elem_id="hub-search")
    token = gr.Textbox(
        label="Access token for gated or private repos (optional; kept in this page only, never saved)",
        type="password",
        elem_id="hub-token",
    )
    hub_status = gr.HTML("", elem_id="hub-status")
    results = gr.HTML("", elem_id="hub-results")
    with gr.Row():
        repo = gr.Dropdown([], label="Repository", allow_custom_value=True, scale=4, elem_id="hub-repo")
        revision = gr.Textbox(label="Revision (optional)", scale=1, elem_id="hub-revision")
        files_btn = gr.Button("Show its LoRA files", scale=1, elem_id="hub-files")
    files_view = gr.HTML("", elem_id="hub-files-view")
    with gr.Row():
        item = gr.Dropdown([], label="File or pair", scale=4, elem_id="hub-item")
        download_btn = gr.Button("Download", variant="primary", scale=1, elem_id="hub-download")
        add_btn = gr.Button("Add to stack", scale=1, elem_id="hub-add")

    def search(text, wan_v, task_v, sort_v, tok):
        try:
            found = studio.hub.search(
                text or "",
                wan_version=None if wan_v == "any" else wan_v,
                task=None if task_v == "any" else task_v,
                sort=sort_v,
                token=tok or None,
            )
        except StudioError as exc:
            return gr.skip(), gr.skip(), h.error(studio, exc)
        repos = [r.repo_id for r in found]
        return (
            results_html(found),
            gr.update(choices=repos, value=repos[0] if repos else None),
            h.status(f"{len(found)} repositories.", "info"),
        )

    search_inputs = [query, wan, task, sort, token]
    search_btn.click(search, inputs=search_inputs, outputs=[results, repo, hub_status], **HUB_QUEUE)
    query.submit(search, inputs=search_inputs, outputs=[results, repo, hub_status], **HUB_QUEUE)

    def show_files(repo_id, rev, tok):
        if not repo_id:
            return gr.skip(), gr.skip(), None, h.status("Choose or type a repository first.", "error")
        try:
            listing = studio.hub.files(
                repo_id,
                rev or None,
                studio.manager.transformer_config(),
                model_name=studio.spec.label,
                token=tok or None,
            )
        except StudioError as exc:
            return gr.skip(), gr.skip(), None, h.error(studio, exc)
        choices = [item_choice(i) for i in listing.items]
        first_ok = next(
            (v for (label, v), i in zip(choices, listing.items, strict=True) if i.compat and i.compat.ok),
            None,
        )
        return (
            files_html(listing),
            gr.update(choices=choices, value=first_ok or (choices[0][1] if choices else None)),
            listing.model_dump(mode="json"),
            h.status(
                f"{len(listing.items)} LoRAs in {repo_id}; nothing is downloaded until you press Download.",
                "info",
            ),
        )

    files_btn.click(
        show_files,
        inputs=[repo, revision, token],
        outputs=[files_view, item, listing_state, hub_status],
        **HUB_QUEUE,
    )

    def download(listing_json, item_id, tok, progress=gr.Progress()):
        if not listing_json or not item_id:
            return h.status("Show a repository's files and choose one first.", "error"), gr.skip()
        try:
            listing = RepoFiles.model_validate(listing_json)
            chosen = listing.item(item_id)
            if chosen.compat is not None and chosen.compat.level == "incompatible":
                return h.status(
                    f"{chosen.label} would change nothing on this model: {chosen.compat.reason}", "error"
                ), gr.skip()
            studio.hub.download(
                listing.repo,
                chosen.files,
                listing.sha,
                lambda done, total: progress((done, max(total, 1)), desc="Downloading", unit="bytes"),
                token=tok or None,
            )
        except StudioError as exc:
            return h.error(studio, exc), gr.skip()
        choices = h.library_choices(studio)
        return (
            h.status(f"Downloaded {chosen.label}; it is now in the LoRA library.", "ok"),
            gr.update(choices=choices),
        )

    download_btn.click(
        download, inputs=[listing_state, item, token], outputs=[hub_status, refs.library], **HUB_QUEUE
    )

    def add(item_id, state, version):
        # A downloaded Hub item has the same id in the library ("hub-…"), so it adds like a local one.
        if not any(i.id == item_id for i in studio.library()):
            return state, version, h.status("Download it first.", "error")
        new_state, message = h.add_lora(studio, state, item_id)
        return new_state, version + (new_state is not state), message

    add_btn.click(
        add,
        inputs=[item, refs.stack_state, refs.stack_version],
        outputs=[refs.stack_state, refs.stack_version, hub_status],
        api_visibility="private",
    )
