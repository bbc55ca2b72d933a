"""The doctor's run over a stack: read what is not cached, then judge every LoRA and every pair.

:class:`Doctor` is what the service holds. :meth:`Doctor.examine` takes the model (its
structure, for reading LoRA files the way the manager loads them, and its base-weight
norms per expert, kept at load time), the stack's LoRAs per expert, and the library's
files (the reference for ``strong``/``weak``). Each file is read at most once per run and
only when something about it is not cached yet; changing weights reads nothing. It never
takes the model's lock, so it runs beside a render.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from studio.doctor.cache import DoctorCache, Unit
from studio.doctor.effect import (
    NO_EFFECT,
    FileStats,
    expert_half,
    expert_stats,
    file_stats,
    judge,
    library_median,
    relative_effect,
)
from studio.doctor.factors import LoraFactors, inner_matrix, read_factors
from studio.doctor.pairs import judge_pair
from studio.doctor.report import LibraryReference, LoraFinding, PairFinding
from studio.engine.norms import ModuleNorm
from studio.engine.plan import expert_parts
from studio.errors import LoraFileError
from studio.loras.sources import FileIdentity, resolve_source
from studio.stack.schema import Stack


@dataclass(frozen=True)
class StackLora:
    """One LoRA of the stack on one expert (active: enabled, weight ≠ 0)."""

    entry: str
    name: str
    expert: str
    weight: float
    identity: FileIdentity | None  # None when the file cannot be found
    error: str | None = None

    @property
    def file(self) -> str:
        return str(self.identity.path) if self.identity is not None else ""


@dataclass
class ModelView:
    """What the doctor needs of the loaded model."""

    key: str  # :func:`studio.doctor.cache.model_key` of its transformer config
    label: str
    transformer: nn.Module  # read for its structure only
    norms: Mapping[str, Mapping[str, ModuleNorm]]  # expert -> module -> base norms
    device: str | None = None  # where the Gram matrices are taken ("cuda" on a GPU machine)


@dataclass
class Examination:
    loras: list[LoraFinding]
    pairs: list[PairFinding]
    library: list[LibraryReference]
    stats: dict[FileIdentity, FileStats] = field(default_factory=dict)


def stack_loras(stack: Stack, roots: Sequence[Path], components: Mapping[str, str]) -> list[StackLora]:
    """The active LoRAs of ``stack`` per expert (``components``: expert → pipeline component)."""
    expert_of = {component: expert for expert, component in components.items()}
    out: list[StackLora] = []
    for entry in stack.entries:
        if not entry.enabled:
            continue
        for component, source, weight in expert_parts(entry, components):
            if weight == 0.0:
                continue
            expert = expert_of[component]
            try:
                identity = FileIdentity.of(resolve_source(source, roots))
            except LoraFileError as exc:
                out.append(StackLora(entry.id, entry.name, expert, weight, None, str(exc)))
                continue
            except OSError:
                message = f"the file {source.label()} cannot be read; add it again."
                out.append(StackLora(entry.id, entry.name, expert, weight, None, message))
                continue
            out.append(StackLora(entry.id, entry.name, expert, weight, identity))
    return out


READ_GROUP = 8  # library files read and measured together


def _ordered(a: Unit, b: Unit) -> tuple[Unit, Unit]:
    return (a, b) if str(a) <= str(b) else (b, a)


def _halves(stats: FileStats) -> list[str | None]:
    return list(stats.halves) if stats.halves else [None]


def _unit_pairs(
    a: FileIdentity, halves_a: list[str | None], b: FileIdentity, halves_b: list[str | None]
) -> list[tuple[Unit, Unit]]:
    """The parts of two files that can meet on one expert (two split files: the same half only)."""
    out = []
    for ha in halves_a:
        for hb in halves_b:
            if ha is None or hb is None or ha == hb:
                out.append(_ordered((a, ha), (b, hb)))
    return out


def _self_dots(stats: FileStats) -> dict[str, float]:
    return {name: m.weight_sq + m.bias_sq for name, m in stats.modules.items()}


class Doctor:
    """Computes and caches the stack doctor's findings (see the module doc)."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache = DoctorCache(cache_dir)
        self._lock = threading.Lock()
        self.files_read = 0  # LoRA files read (tests and benchmarks check it)

    def _read(self, model: ModelView, identity: FileIdentity) -> dict[str | None, LoraFactors] | FileStats:
        """The file's factors (per half), or (cached when it is the file's fault) why it cannot be measured."""
        self.files_read += 1
        try:
            return read_factors(identity.path, model.transformer)
        except LoraFileError as exc:
            stats = FileStats(error=str(exc))
            self.cache.put_file_stats(model.key, identity, stats)
            return stats
        except OSError as exc:
            return FileStats(error=f"{identity.path.name} cannot be read ({exc.strerror}); add it again.")

    def _measure(
        self,
        model: ModelView,
        group: list[FileIdentity],
        stats: dict[FileIdentity, FileStats],
        wanted: set[tuple[FileIdentity, FileIdentity]],
        dots: dict[tuple[Unit, Unit], dict[str, float]],
    ) -> None:
        """Read ``group`` together; per module one :func:`inner_matrix` gives its sizes and wanted pairs."""
        factors: dict[Unit, LoraFactors] = {}
        halves: dict[FileIdentity, list[str | None]] = {}
        for identity in group:
            read = self._read(model, identity)
            if isinstance(read, FileStats):
                stats.setdefault(identity, read)
                continue
            halves[identity] = list(read)
            for half, f in read.items():
                factors[(identity, half)] = f
        squares: dict[Unit, dict[str, float]] = {u: {} for u in factors}
        pairs = [
            unit_pair
            for a, b in wanted
            if a in halves and b in halves
            for unit_pair in _unit_pairs(a, halves[a], b, halves[b])
        ]
        found: dict[tuple[Unit, Unit], dict[str, float]] = {pair: {} for pair in pairs}
        modules = dict.fromkeys(name for f in factors.values() for name in f.modules)
        for name in modules:
            owners = [u for u in factors if name in factors[u].modules]
            matrix = inner_matrix([factors[u].modules[name] for u in owners], model.device)
            index = {u: k for k, u in enumerate(owners)}
            for u in owners:
                squares[u][name] = matrix[index[u]][index[u]]
            for a, b in pairs:
                if a in index and b in index:
                    found[(a, b)][name] = matrix[index[a]][index[b]]
        for identity, parts in halves.items():
            if identity in stats:
                continue
            if parts == [None]:
                stats[identity] = file_stats(factors[(identity, None)], squares[(identity, None)])
            else:
                split = {h: file_stats(factors[(identity, h)], squares[(identity, h)]) for h in parts}
                notes = list(dict.fromkeys(n for part in split.values() for n in part.notes))
                stats[identity] = FileStats(halves={str(h): v for h, v in split.items()}, notes=notes)
            self.cache.put_file_stats(model.key, identity, stats[identity])
        for pair, pair_found in found.items():
            dots[pair] = pair_found
            self.cache.put_pair_dots(model.key, *pair, pair_found)

    def examine(
        self,
        model: ModelView,
        loras: Sequence[StackLora],
        reference: Mapping[str, Iterable[FileIdentity]] | None = None,
        *,
        read_reference: bool = True,
    ) -> Examination:
        """Judge ``loras``; ``reference``: expert → the library files ``strong``/``weak`` compare with.

        Without ``read_reference`` only reference files already measured (cached) count.
        """
        refs = {e: list(dict.fromkeys(files)) for e, files in (reference or {}).items()}
        with self._lock:
            if not read_reference:
                refs = {
                    e: [f for f in files if self.cache.file_stats(model.key, f)] for e, files in refs.items()
                }
            return self._examine(model, list(loras), refs)

    def _examine(
        self, model: ModelView, loras: list[StackLora], reference: dict[str, list[FileIdentity]]
    ) -> Examination:
        usable = [x for x in loras if x.identity is not None]
        stack_files = list(dict.fromkeys(x.identity for x in usable))  # type: ignore[misc]
        files = list(dict.fromkeys([*stack_files, *(f for fs in reference.values() for f in fs)]))
        stats: dict[FileIdentity, FileStats] = {}
        for identity in files:
            cached = self.cache.file_stats(model.key, identity)
            if cached is not None:
                stats[identity] = cached

        by_expert: dict[str, list[StackLora]] = {}
        for x in usable:
            by_expert.setdefault(x.expert, []).append(x)
        pairs_wanted: set[tuple[FileIdentity, FileIdentity]] = set()
        for members in by_expert.values():
            for i, a in enumerate(members):
                for b in members[i + 1 :]:
                    if a.identity != b.identity:
                        pairs_wanted.add(tuple(sorted((a.identity, b.identity), key=str)))  # type: ignore[arg-type]
        dots: dict[tuple[Unit, Unit], dict[str, float]] = {}
        missing_pairs = []
        for a, b in sorted(pairs_wanted, key=str):
            if a not in stats or b not in stats:
                missing_pairs.append((a, b))
                continue
            units = _unit_pairs(a, _halves(stats[a]), b, _halves(stats[b]))
            cached = {pair: self.cache.pair_dots(model.key, *pair) for pair in units}
            if all(v is not None for v in cached.values()):
                dots.update(cached)  # type: ignore[arg-type]
            else:
                missing_pairs.append((a, b))

        # Files read together: those of the missing pairs (and the stack's) first, then the rest of
        # the library in small groups (wide Gram matrices, bounded memory).
        together = list(
            dict.fromkeys(
                [f for pair in missing_pairs for f in pair] + [f for f in stack_files if f not in stats]
            )
        )
        rest = [f for f in files if f not in stats and f not in together]
        groups = [together] + [rest[i : i + READ_GROUP] for i in range(0, len(rest), READ_GROUP)]
        for group in groups:
            if group:
                self._measure(model, group, stats, set(missing_pairs), dots)

        return self._judge(model, loras, reference, stats, dots)

    def _judge(self, model, loras, reference, stats, dots) -> Examination:
        experts = list(model.norms)
        effect_at_1: dict[tuple[FileIdentity, str], float | None] = {}
        for identity, file in stats.items():
            for expert in experts:
                part = expert_stats(file, expert)
                effect_at_1[(identity, expert)] = (
                    None if part.error else relative_effect(part, model.norms[expert])
                )

        def median_without(expert: str, own: FileIdentity | None) -> float | None:
            return library_median(effect_at_1.get((r, expert)) for r in reference.get(expert, ()) if r != own)

        library = []
        for expert in experts:
            values = [effect_at_1.get((r, expert)) for r in reference.get(expert, ())]
            count = sum(1 for v in values if v is not None and v >= NO_EFFECT)
            library.append(LibraryReference(expert=expert, median=library_median(values), count=count))

        findings: list[LoraFinding] = []
        for x in loras:
            s = expert_stats(stats[x.identity], x.expert) if x.identity in stats else None
            error = x.error or (s.error if s is not None else "the file could not be read")
            if x.identity is None or s is None or s.error:
                findings.append(
                    LoraFinding(
                        file=x.file, name=x.name, entry=x.entry, expert=x.expert, weight=x.weight,
                        relative_effect=None, relative_effect_at_1=None, factor=None, suggested_weight=None,
                        modules=0, flags=[], error=error,
                    )
                )  # fmt: skip
                continue
            at_1 = effect_at_1.get((x.identity, x.expert))
            verdict = judge(x.weight, at_1, median_without(x.expert, x.identity))
            norms = model.norms.get(x.expert, {})
            findings.append(
                LoraFinding(
                    file=x.file, name=x.name, entry=x.entry, expert=x.expert, weight=x.weight,
                    relative_effect=verdict.relative_effect, relative_effect_at_1=verdict.relative_effect_at_1,
                    factor=verdict.factor, suggested_weight=verdict.suggested_weight,
                    modules=sum(1 for m in s.modules if m in norms), flags=verdict.flags,
                )
            )  # fmt: skip

        pairs: list[PairFinding] = []
        usable = [
            x for x in loras if x.identity in stats and not expert_stats(stats[x.identity], x.expert).error
        ]
        for expert in experts:
            members = [x for x in usable if x.expert == expert]
            for i, a in enumerate(members):
                for b in members[i + 1 :]:
                    sa, sb = (expert_stats(stats[x.identity], expert) for x in (a, b))
                    if a.identity == b.identity:
                        pair_dots_ = _self_dots(sa)
                    else:
                        ua = (a.identity, expert_half(stats[a.identity], expert))
                        ub = (b.identity, expert_half(stats[b.identity], expert))
                        pair_dots_ = dots.get(_ordered(ua, ub), {})
                    verdict = judge_pair(pair_dots_, sa, sb, a.weight, b.weight)
                    pairs.append(
                        PairFinding(
                            a=a.file, b=b.file, a_name=a.name, b_name=b.name, a_entry=a.entry, b_entry=b.entry,
                            expert=expert, shared_modules=verdict.shared_modules, cosine=verdict.cosine,
                            flags=verdict.flags, scale_both=verdict.scale_both,
                        )
                    )  # fmt: skip
        return Examination(loras=findings, pairs=pairs, library=library, stats=stats)
