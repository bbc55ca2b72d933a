"""What a Hub repo says about itself: Wan version, task, base models, LoRA-ness, card summary, trigger words.

Pure functions over the data the Hub returns (tags, ``cardData``, the README text), used by
:mod:`studio.hub` to filter and describe search results. Hub tags and card snippets are often
wrong about the base model a LoRA is for; that is why the studio also reads each file's header
(:meth:`studio.hub.HubClient.files`) before anything is downloaded. What is decided here is only a
first guess for the search list.

Rules:

* **base models**: ``base_model:[relation:]ORG/NAME`` tags (relation ``adapter``, ``finetune``, ``merge``,
  ``quantized``) and the card's ``base_model`` (a string or a list);
* **Wan version**: ``wan2.2`` / ``Wan2_1`` / ``wan22`` … in the base models, else in the repo id, tags and
  card tags; ``None`` when nothing says;
* **task**: ``image-to-video`` / ``text-to-video`` tags and ``I2V`` / ``T2V`` / ``TI2V`` (both) in the
  base models, the id or the tags;
* **Wan at all**: a Wan version, or the word ``wan`` / ``WanVideo`` in the id, tags or base models;
* **LoRA**: a ``lora`` tag (or ``lora`` in the id), a ``base_model:adapter:`` tag, or the ``peft`` library;
* **summary**: the card's ``description``/``summary`` when present, else the first prose paragraph of the
  README (headings, images, badges, HTML, tables and code skipped), at most 300 characters;
* **trigger words**: the card's ``instance_prompt``, else README lines such as ``Trigger word: `sks```,
  ``**Trigger words**: a, b`` or "You should use `sks` to trigger …"; the card's ``widget`` texts are
  example prompts, kept apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_SUMMARY = 300
MAX_TRIGGERS = 10
MAX_WORD = 100
MAX_EXAMPLES = 3

_WAN_VERSION_RE = re.compile(r"(?<![a-z])wan(?:video)?[\s_.\-]*v?2[\s_.\-]*([12])(?![0-9])", re.IGNORECASE)
_WAN_WORD_RE = re.compile(r"(?<![a-z])wan(?:video|x)?(?![a-z])", re.IGNORECASE)
_TASK_RE = re.compile(r"(?<![a-z0-9])(ti2v|i2v|t2v)(?![a-z])", re.IGNORECASE)
_RELATIONS = ("adapter:", "finetune:", "merge:", "quantized:")
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n.*?\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_TRIGGER_LINE_RE = re.compile(
    r"trigger(?:[ _-]?(?:word|words|phrase|phrases|prompt|token|tokens|keyword|keywords))?s?\**\s*[:：]\s*(?P<rest>.+)",
    re.IGNORECASE,
)
_USE_TO_TRIGGER_RE = re.compile(r"use\s+`(?P<word>[^`]{1,100})`\s+to\s+trigger", re.IGNORECASE)
_BACKTICKS_RE = re.compile(r"`([^`]{1,100})`")
_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HTML_TAG_RE = re.compile(r"<[^>]{0,200}>")


def as_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        return [v for v in value if isinstance(v, str)]
    return []


def base_models(tags: Iterable[str], card: Mapping[str, Any]) -> list[str]:
    """The base model ids a repo names (tags first, then the card), without duplicates."""
    found: list[str] = []
    for tag in tags:
        if not tag.lower().startswith("base_model:"):
            continue
        name = tag[len("base_model:") :]
        for relation in _RELATIONS:
            if name.lower().startswith(relation):
                name = name[len(relation) :]
                break
        if name and name not in found:
            found.append(name)
    for name in as_texts(card.get("base_model")):
        if name and name not in found:
            found.append(name)
    return found


def wan_versions(texts: Iterable[str]) -> list[str]:
    """``["2.1", "2.2"]`` …: the Wan versions the texts mention."""
    versions = {f"2.{m.group(1)}" for text in texts for m in _WAN_VERSION_RE.finditer(text)}
    return sorted(versions)


def tasks_of(texts: Iterable[str]) -> list[str]:
    """``["i2v"]``, ``["t2v"]``, both or none, from tags and names."""
    found: set[str] = set()
    for text in texts:
        low = text.lower()
        if low == "image-to-video":
            found.add("i2v")
        elif low == "text-to-video":
            found.add("t2v")
        for m in _TASK_RE.finditer(text):
            word = m.group(1).lower()
            found.update(("i2v", "t2v") if word == "ti2v" else (word,))
    return sorted(found)


def mentions_wan(texts: Iterable[str]) -> bool:
    return any(_WAN_WORD_RE.search(t) or _WAN_VERSION_RE.search(t) for t in texts)


def looks_like_lora(repo_id: str, tags: Iterable[str], library: str | None, card: Mapping[str, Any]) -> bool:
    lowered = [t.lower() for t in tags] + [t.lower() for t in as_texts(card.get("tags"))]
    if any(t == "lora" or "lora" in t.split(":")[-1].split("-") for t in lowered):
        return True
    if any(t.startswith("base_model:adapter:") for t in lowered):
        return True
    if (library or "").lower() == "peft" or str(card.get("library_name") or "").lower() == "peft":
        return True
    return "lora" in repo_id.lower()


# ---------------------------------------------------------------------------------------------------------------
# Card text
# ---------------------------------------------------------------------------------------------------------------


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _clean_inline(text: str) -> str:
    text = _LINK_RE.sub(lambda m: m.group(1), text)
    text = _HTML_TAG_RE.sub("", text)
    text = text.replace("**", "").replace("__", "").replace("`", "")
    return " ".join(text.split())


def strip_front_matter(text: str) -> str:
    return _FRONT_MATTER_RE.sub("", text, count=1)


def readme_summary(text: str) -> str | None:
    """The first prose paragraph of a README (no headings, images, badges, HTML, tables, code, lists)."""
    body = strip_front_matter(text)
    in_code = False
    paragraph: list[str] = []

    def flush() -> str | None:
        if not paragraph:
            return None
        candidate = _clean_inline(" ".join(paragraph))
        paragraph.clear()
        if len(candidate.split()) >= 3 and sum(c.isalpha() for c in candidate) >= 12:
            return _short(candidate, MAX_SUMMARY)
        return None

    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith(("```", "~~~")):
            in_code = not in_code
            found = flush()
            if found:
                return found
            continue
        if in_code:
            continue
        skip = (
            not line
            or line.startswith(("#", "![", "[![", "<", "|", "---", "===", "* ", "- ", "+ ", ">"))
            or re.match(r"^\d+[.)]\s", line) is not None
            or _TRIGGER_LINE_RE.search(line) is not None
        )
        if skip:
            found = flush()
            if found:
                return found
            continue
        paragraph.append(line)
    return flush()


def _split_words(value: str) -> list[str]:
    quoted = _BACKTICKS_RE.findall(value)
    items = quoted if quoted else re.split(r"[,;]", value)
    words: list[str] = []
    for item in items:
        word = _clean_inline(item).strip(" .*_\"'")
        if word and word not in words:
            words.append(word[:MAX_WORD])
    return words


def readme_triggers(text: str) -> list[str]:
    """Trigger words a README names ("Trigger word: `sks`", "use `sks` to trigger")."""
    words: list[str] = []
    body = strip_front_matter(text)
    for line in body.splitlines():
        m = _TRIGGER_LINE_RE.search(line)
        found = _split_words(m.group("rest")) if m else []
        found += [w.group("word").strip() for w in _USE_TO_TRIGGER_RE.finditer(line)]
        for word in found:
            if word and word not in words:
                words.append(word)
        if len(words) >= MAX_TRIGGERS:
            break
    return words[:MAX_TRIGGERS]


def card_triggers(card: Mapping[str, Any]) -> list[str]:
    """Trigger words from the card metadata (``instance_prompt``)."""
    words: list[str] = []
    for value in as_texts(card.get("instance_prompt")):
        for word in re.split(r"[,;]", value) if "," in value or ";" in value else [value]:
            word = " ".join(word.split())[:MAX_WORD]
            if word and word not in words:
                words.append(word)
    return words[:MAX_TRIGGERS]


def card_examples(card: Mapping[str, Any]) -> list[str]:
    """Example prompts from the card's ``widget`` entries."""
    examples: list[str] = []
    widget = card.get("widget")
    for item in widget if isinstance(widget, list) else []:
        text = item.get("text") if isinstance(item, Mapping) else None
        if isinstance(text, str) and text.strip():
            examples.append(_short(text, MAX_SUMMARY))
        if len(examples) >= MAX_EXAMPLES:
            break
    return examples


def card_summary(card: Mapping[str, Any]) -> str | None:
    for key in ("description", "summary", "model_summary"):
        for text in as_texts(card.get(key)):
            if text.strip():
                return _short(_clean_inline(text), MAX_SUMMARY)
    return None
