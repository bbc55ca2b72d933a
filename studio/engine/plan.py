"""Planning a stack change as a diff against what is loaded (pure: no model, no tensor reads).

An adapter is one LoRA file in one expert. Its name is derived from the file's identity
(resolved path, size, mtime), so reordering the stack or renaming an entry changes
nothing, a file edited on disk is reloaded, and one file used by two entries is loaded
once with the weights added up (LoRA deltas add).

Entries that are disabled or at weight 0 keep their adapter if it is already loaded
(turning them back on is then only a scale change) and are not loaded otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import LoraFileError
from studio.loras.sources import FileIdentity, resolve_source
from studio.stack.schema import Stack, StackEntry

AdapterKey = tuple[str, str]  # (pipeline component, adapter name)


@dataclass
class AdapterPlan:
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # component -> adapter -> weight
    to_load: dict[FileIdentity, list[AdapterKey]] = field(default_factory=dict)
    to_delete: list[AdapterKey] = field(default_factory=list)


def adapter_name(identity: FileIdentity) -> str:
    text = f"{identity.path}|{identity.size}|{identity.mtime_ns}"
    return "lora_" + hashlib.sha1(text.encode()).hexdigest()[:12]


def expert_parts(entry: StackEntry, components: Mapping[str, str]):
    """(component, source, weight) for each expert of the model that ``entry`` names a file for."""
    if len(components) == 1:  # one-expert model: the high part, or the low part if that's all there is
        (component,) = components.values()
        expert = "high" if entry.high is not None else "low"
        yield component, entry.source(expert), entry.weight(expert)
        return
    for expert, component in components.items():
        source = entry.source(expert)
        if source is not None:
            yield component, source, entry.weight(expert)


def plan_stack(
    stack: Stack,
    *,
    roots: Sequence[Path],
    components: Mapping[str, str],
    loaded: Mapping[AdapterKey, FileIdentity],
) -> AdapterPlan:
    plan = AdapterPlan()
    keep: set[AdapterKey] = set()
    identities: dict[str, FileIdentity] = {}
    for entry in stack.entries:
        for component, source, weight in expert_parts(entry, components):
            active = entry.enabled and weight != 0.0
            key_text = source.model_dump_json()
            identity = identities.get(key_text)
            if identity is None:
                try:
                    identity = FileIdentity.of(resolve_source(source, roots))
                except LoraFileError as exc:
                    if active:
                        raise LoraFileError(f"{entry.name}: {exc}") from None
                    continue
                except OSError:
                    if active:
                        raise LoraFileError(
                            f"{entry.name}: the file {source.label()} cannot be read; add it again."
                        ) from None
                    continue
                identities[key_text] = identity
            key = (component, adapter_name(identity))
            if active:
                component_weights = plan.weights.setdefault(component, {})
                component_weights[key[1]] = component_weights.get(key[1], 0.0) + weight
                keep.add(key)
                if key not in loaded:
                    targets = plan.to_load.setdefault(identity, [])
                    if key not in targets:
                        targets.append(key)
            elif key in loaded:
                keep.add(key)
    plan.to_delete = [key for key in loaded if key not in keep]
    return plan
