"""Searching the Hub for Wan LoRAs (part of :class:`studio.hub.client.HubClient`)."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from studio.errors import ValidationError
from studio.hub import card as hub_card
from studio.hub.common import (
    MAX_FETCH,
    MAX_LIMIT,
    README_BYTES,
    README_TIMEOUT_S,
    SEARCH_FIELDS,
    SORTS,
    WORKERS,
    HubError,
    RepoSummary,
    SortKey,
    Task,
    WanVersion,
    card_dict,
    iso_time,
    log,
    token_key,
)


class SearchMixin:
    """``HubClient.search``: Wan LoRAs matching a query, with card summaries and trigger words."""

    # -- search ---------------------------------------------------------------------------------------------
    def search(
        self,
        query: str = "",
        *,
        wan_version: WanVersion | None = None,
        task: Task | None = None,
        sort: SortKey = "downloads",
        limit: int = 20,
        lora_only: bool = True,
        readme: bool = True,
        token: str | None = None,
        timeout_s: float | None = None,
    ) -> list[RepoSummary]:
        """Wan LoRA repos matching ``query`` (see the module docstring); cached for ``cache_ttl_s``."""
        query = " ".join((query or "").split())[:200]
        if sort not in SORTS:
            raise ValidationError(f"Sort by one of {', '.join(SORTS)}, not {sort!r}.")
        if wan_version not in (None, "2.2", "2.1"):
            raise ValidationError(f"The Wan version is 2.2 or 2.1, not {wan_version!r}.")
        if task not in (None, "i2v", "t2v"):
            raise ValidationError(f"The task is i2v or t2v, not {task!r}.")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"Ask for 1 to {MAX_LIMIT} results, not {limit!r}.")
        tok = self._token_for(token)
        key = (
            self.endpoint,
            query.lower(),
            wan_version,
            task,
            sort,
            limit,
            lora_only,
            readme,
            token_key(tok),
        )
        now = time.monotonic()
        with self._lock:
            hit = self._search_cache.get(key)
            if hit is not None and now - hit[0] < self.cache_ttl_s:
                return [r.model_copy(deep=True) for r in hit[1]]
        timeout = self._timeout(timeout_s)
        raw = self._list_models(query, sort, min(MAX_FETCH, max(limit * 4, 50)), tok, timeout)
        results = []
        for model in raw:
            summary = self._summarise(model)
            if lora_only and not summary.is_lora:
                continue
            # named base models decide whether it is for Wan at all; without any, the id and tags do
            texts = summary.base_models or [summary.repo_id, *summary.tags]
            if not summary.wan_versions and not hub_card.mentions_wan(texts):
                continue
            if wan_version and summary.wan_versions and wan_version not in summary.wan_versions:
                continue
            if task and summary.tasks and task not in summary.tasks:
                continue
            results.append(summary)
            if len(results) >= limit:
                break
        if readme and results:
            self._add_readmes(results, tok, timeout)
        with self._lock:
            self._search_cache = {
                k: v for k, v in self._search_cache.items() if now - v[0] < self.cache_ttl_s
            }
            self._search_cache[key] = (now, [r.model_copy(deep=True) for r in results])
        return results

    def _list_models(self, query: str, sort: str, fetch: int, token: str | None, timeout: float) -> list:
        from huggingface_hub import ModelInfo
        from huggingface_hub.utils import get_session, hf_raise_for_status

        params: dict[str, Any] = {
            "search": query or "wan",
            "sort": SORTS[sort],
            "limit": fetch,
            "expand": SEARCH_FIELDS,
        }
        try:
            response = get_session().get(
                f"{self.endpoint}/api/models", params=params, headers=self._headers(token), timeout=timeout
            )
            hf_raise_for_status(response)
            items = response.json()
        except Exception as exc:
            raise self._fail(exc, repo=None, action="search for LoRAs") from None
        if not isinstance(items, list):
            raise HubError("The Hugging Face Hub answered the search with something unexpected; try again.")
        models = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                item.setdefault("siblings", None)
                with contextlib.suppress(Exception):
                    models.append(ModelInfo(**item))
        return models

    def _summarise(self, model) -> RepoSummary:
        card = card_dict(getattr(model, "card_data", None))
        tags = [t for t in (model.tags or []) if isinstance(t, str)]
        bases = hub_card.base_models(tags, card)
        card_tags = hub_card.as_texts(card.get("tags"))
        versions = hub_card.wan_versions(bases) or hub_card.wan_versions([model.id, *tags, *card_tags])
        task_texts = [*tags, *bases, model.id, *([model.pipeline_tag] if model.pipeline_tag else [])]
        return RepoSummary(
            repo_id=model.id,
            author=model.author or (model.id.split("/")[0] if "/" in model.id else None),
            downloads=int(model.downloads or 0),
            likes=int(model.likes or 0),
            last_modified=iso_time(model.last_modified),
            sha=model.sha,
            tags=tags,
            pipeline_tag=model.pipeline_tag,
            library_name=model.library_name,
            base_models=bases,
            wan_versions=versions,
            tasks=hub_card.tasks_of(task_texts),
            is_lora=hub_card.looks_like_lora(model.id, tags, model.library_name, card),
            gated=bool(model.gated),
            private=bool(model.private),
            summary=hub_card.card_summary(card),
            trigger_words=hub_card.card_triggers(card),
            example_prompts=hub_card.card_examples(card),
            url=f"{self.endpoint}/{model.id}",
        )

    def _add_readmes(self, results: list[RepoSummary], token: str | None, timeout: float) -> None:
        wanted = [r for r in results if r.summary is None or not r.trigger_words]

        def fetch(r: RepoSummary) -> tuple[str | None, list[str]]:
            key = (self.endpoint, r.repo_id, r.sha or r.last_modified, token_key(token))
            with self._lock:
                if key in self._readme_cache:
                    return self._readme_cache[key]
            text = self._readme(r.repo_id, r.sha, token, min(timeout, README_TIMEOUT_S))
            found = (hub_card.readme_summary(text), hub_card.readme_triggers(text)) if text else (None, [])
            with self._lock:
                if len(self._readme_cache) > 1000:
                    self._readme_cache.clear()
                self._readme_cache[key] = found
            return found

        if not wanted:
            return
        with ThreadPoolExecutor(
            max_workers=min(WORKERS, len(wanted)), thread_name_prefix="hub-readme"
        ) as pool:
            for r, (summary, triggers) in zip(wanted, pool.map(fetch, wanted), strict=True):
                if r.summary is None:
                    r.summary = summary
                if not r.trigger_words:
                    r.trigger_words = triggers

    def _readme(self, repo: str, sha: str | None, token: str | None, timeout: float) -> str | None:
        """The first :data:`README_BYTES` of a repo's README (None when it has none or it fails)."""
        from huggingface_hub import hf_hub_url

        from studio.hub.header import _range_get

        url = hf_hub_url(repo, "README.md", revision=sha or "main", endpoint=self.endpoint)
        try:
            data, _ = _range_get(url, self._headers(token), 0, README_BYTES - 1, timeout)
        except Exception as exc:  # a README is a nicety: the search result stands without it
            log.debug("no README for %s (%s)", repo, type(exc).__name__)
            return None
        return data.decode("utf-8", "replace")
