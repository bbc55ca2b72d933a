"""Compiled mode: regional ``torch.compile`` of the experts, with LoRAs that hot-swap without recompiling.

:func:`prepare` gives every Linear of a transformer fixed-size LoRA room
(:mod:`studio.engine.lora_slots`: factors in row ranges of fixed buffers, weights as
tensors) and then compiles only the repeated blocks (``compile_repeated_blocks``; Wan
declares ``WanTransformerBlock``), so one block graph serves all 40 layers of both experts.
The first forward compiles; after that none of these recompiles:

- changing LoRA weights, or a per-step schedule (a write into the scale buffers);
- adding a LoRA up to the room left, swapping one for another, removing all of them
  (copies into / zeroes of the factor buffers);
- a new seed, prompt, negative prompt or guidance (same shapes);
- switching expert (both experts run the same block graph).

Changing the size or the number of frames changes the token count: the first such change
recompiles once with a dynamic token count, and later sizes reuse that graph. A stack that needs
more room than there is grows the buffers (one recompile, see :func:`grown`); a LoRA the
room cannot hold (DoRA, LoKr, ...) is refused with :class:`~studio.engine.lora_slots.NotHotswappable`
so the caller can run that stack uncompiled.

Fusing is not used in compiled mode: the LoRA rows run inside the compiled blocks, and the
room costs the same per step whatever is loaded (``2·tokens·rows·(in+out)`` FLOPs per
Linear, :func:`room_flops_fraction`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Hashable, Iterable, Iterator

import torch
from torch import nn

from studio.engine import lora_slots
from studio.engine.lora_slots import LoraBank, SlotsFull

__all__ = [
    "DEFAULT_LORA_RANK",
    "DEFAULT_LORA_SLOTS",
    "CompiledMode",
    "NotCompilable",
    "check_compile",
    "compile_refusal",
    "compiled_graphs",
    "grown",
    "is_prepared",
    "no_recompile",
    "prepare",
    "release",
    "room_flops_fraction",
]

DEFAULT_LORA_RANK = 128  # LoRA rows per expert: e.g. a rank-64 speed LoRA plus two rank-32 styles
DEFAULT_LORA_SLOTS = 8  # LoRAs with biases (diff_b) per expert
ROW_STEP = 64
UNSUPPORTED_MODES = ("group-offload", "sequential")
_ROPE_HOOK = "_studio_rope_hook"


def compile_refusal(mode: str, device: str) -> str | None:
    """Why compiled mode cannot run here (as a sentence that says what to do), or None."""
    if mode in UNSUPPORTED_MODES:
        return (
            f"Compiled mode does not work with the {mode} memory mode (it moves weights block by block "
            "inside the compiled blocks); choose gpu, model-offload or auto, or turn compiled mode off."
        )
    if not hasattr(nn.Module, "compile"):
        return f"Compiled mode needs torch 2.2 or newer (this is {torch.__version__}); turn it off."
    if device == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("gcc")):
        return "Compiled mode on the CPU needs a C++ compiler (gcc); install one or turn compiled mode off."
    if device == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Compiled mode on the GPU needs triton (pip install triton); install it or turn it off."
    return None


def check_compile(memory, device: str, spec=None) -> None:
    """Raise a ValidationError (a sentence) when ``memory`` asks for compiled mode and it cannot run here."""
    from studio.engine.memory import effective_mode
    from studio.errors import ValidationError

    mode = effective_mode(memory, is_demo=spec is None or spec.is_demo)
    if memory.compile and (refusal := compile_refusal(mode, device)):
        raise ValidationError(refusal)


def _blocks(model: nn.Module) -> list[nn.Module]:
    names = set(getattr(model, "_repeated_blocks", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def is_prepared(model: nn.Module) -> bool:
    return lora_slots.bank_of(model) is not None


def prepare(
    model: nn.Module,
    *,
    rows: int = DEFAULT_LORA_RANK,
    slots: int = DEFAULT_LORA_SLOTS,
    dtype: torch.dtype | None = None,
) -> LoraBank:
    """LoRA room in every Linear of ``model``, then regional compilation of its repeated blocks.

    Returns the model's :class:`~studio.engine.lora_slots.LoraBank`. Nothing compiles until
    the first forward. The model must hold no peft adapters (delete them first).
    """
    if not _blocks(model):
        raise ValueError(f"{type(model).__name__} declares no repeated blocks to compile")
    bank = lora_slots.install(model, rows=rows, slots=slots, dtype=dtype)
    rope = getattr(model, "rope", None)
    if isinstance(rope, nn.Module):
        model.__dict__[_ROPE_HOOK] = rope.register_forward_hook(_detached_views)
    model.compile_repeated_blocks(fullgraph=True)
    return bank


def _detached_views(module: nn.Module, args, output):
    """The rotary tables as tensors of their own, not views of a ``[frames, h, w, d]`` base.

    The blocks get them as views, and dynamo guards on the base's shape too: a new size
    would then recompile once per latent dimension that changes for the first time. As
    plain tensors only the token count varies, so the first new size recompiles once (with
    a dynamic token count) and later sizes reuse that graph.
    """
    if isinstance(output, tuple):
        return tuple(t.clone() if isinstance(t, torch.Tensor) and t._base is not None else t for t in output)
    return output


def release(model: nn.Module) -> None:
    """Back to the plain model: blocks run eagerly again, the LoRA room (and what it holds) goes."""
    for block in _blocks(model):
        block._compiled_call_impl = None
    hook = model.__dict__.pop(_ROPE_HOOK, None)
    if hook is not None:
        hook.remove()
    lora_slots.uninstall(model)


def grown(bank: LoraBank, full: SlotsFull) -> tuple[int, int]:
    """The room to grow to for a :class:`SlotsFull`: rows rounded up to a multiple of 64, slots doubled."""
    rows = -(-max(full.rows, bank.rows) // ROW_STEP) * ROW_STEP
    slots = bank.slots * 2 if full.slots > bank.slots else bank.slots
    return rows, slots


def room_flops_fraction(config: dict, rows: int, tokens: int, text_tokens: int = 512) -> float:
    """Extra matmul FLOPs of ``rows`` LoRA rows in every block Linear, as a fraction of a forward's.

    The LoRA room runs whatever is loaded: ``2·n·rows·(in+out)`` per Linear over its ``n``
    input tokens (the text tokens for cross-attention keys and values). Forward FLOPs as in
    ``bench.subjects.forward_flops``.
    """
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    f = int(config["ffn_dim"])
    L, T = tokens, text_tokens
    room = 2 * rows * (6 * L * 2 * d + 2 * T * 2 * d + 2 * L * (d + f))
    forward = 8 * L * d * d + 4 * L * L * d + 4 * L * d * d + 4 * T * d * d + 4 * L * T * d + 4 * L * d * f
    return room / forward


@contextlib.contextmanager
def no_recompile() -> Iterator[None]:
    """Inside, a recompile of anything already compiled raises instead of recompiling (for tests/checks)."""
    import torch._dynamo

    before = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        yield
    finally:
        torch._dynamo.config.error_on_recompile = before


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process so far (a render that compiled raises it)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class NotCompilable(Exception):
    """A LoRA file the LoRA room cannot hold (``identity`` names it): stacks with it run uncompiled."""

    def __init__(self, identity: Hashable, reason: str) -> None:
        super().__init__(reason)
        self.identity = identity
        self.reason = reason


class CompiledMode:
    """The pipeline manager's side of compiled mode: the experts' state, the fallbacks, the notices.

    ``active``: the experts hold LoRA room and compiled blocks. ``not_compilable``: LoRA
    files (by identity) the room cannot hold, with why: a stack using one runs uncompiled.
    ``notices``: sentences for the user, collected during a render.
    """

    def __init__(self) -> None:
        self.active = False
        self.not_compilable: dict[Hashable, str] = {}
        self.broken: str | None = None  # why compiling failed on this model (then it stays uncompiled)
        self.notices: list[str] = []
        self._graphs = 0

    def reset(self) -> None:
        self.active = False
        self.not_compilable.clear()
        self.broken = None

    def wanted(self, on: bool, files: Iterable[Hashable]) -> bool:
        """Whether the experts should be compiled for a stack of ``files`` when compiled mode is ``on``."""
        if not on:
            self.broken = None  # turning compiled mode off and on again retries compiling
        return on and self.broken is None and not (set(files) & self.not_compilable.keys())

    def failed(self, exc: BaseException) -> bool:
        """Whether ``exc`` (from a render) is torch.compile failing; then compiled mode is off for this model.

        The caller renders again: the stack loads uncompiled. A recompile refused by
        :func:`no_recompile` is not a failure of compiling (it propagates).
        """
        from torch._dynamo.exc import RecompileError, TorchDynamoException

        if not self.active or isinstance(exc, RecompileError) or not isinstance(exc, TorchDynamoException):
            return False
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        self.broken = f"{type(exc).__name__}: {first}"
        self.notices.append(
            f"Compiling the transformer blocks failed ({self.broken}); this model now renders uncompiled. "
            "Turn compiled mode off for one render and on again to retry."
        )
        return True

    def switch(self, models: Iterable[nn.Module], on: bool, *, rows: int, dtype_of) -> None:
        """Prepare (``on``) or release every model; they must hold no LoRAs (delete them first)."""
        for model in models:
            if on:
                prepare(model, rows=rows, dtype=dtype_of(model))
            else:
                release(model)
        self.active = on

    def load(self, model: nn.Module, state_dict, adapter: str) -> bool:
        """Copy a LoRA into ``model``'s room (growing it when full); False when ``model`` is not prepared."""
        bank = lora_slots.bank_of(model)
        if bank is None:
            return False
        try:
            bank.load(state_dict, adapter)
        except SlotsFull as full:
            rows, slots = grown(bank, full)
            bank.grow(rows, slots)
            self.notices.append(
                f"The stack needs more LoRA room than compiled mode had ({full}); it now has {rows} rows "
                "per expert, so the blocks compile again (once)."
            )
            bank.load(state_dict, adapter)
        return True

    def delete(self, model: nn.Module, adapters: Iterable[str]) -> bool:
        """Free the rows of ``adapters`` in ``model``'s room; False when ``model`` is not prepared."""
        bank = lora_slots.bank_of(model)
        if bank is None:
            return False
        bank.delete(list(adapters))
        return True

    def refuse(self, failure: NotCompilable, file_name: str) -> None:
        self.not_compilable[failure.identity] = failure.reason
        self.notices.append(
            f"{file_name} cannot hot-swap in compiled mode ({failure.reason}), so stacks with it run "
            "uncompiled; remove it to compile again."
        )

    def start_render(self, fuse: bool) -> None:
        if fuse and self.active:
            self.notices.append("Compiled mode runs the LoRAs in the compiled blocks instead of fusing them.")
        self._graphs = compiled_graphs() if self.active else 0

    def end_denoise(self) -> None:
        graphs = compiled_graphs() - self._graphs if self.active else 0
        if graphs:
            self.notices.append(
                f"Compiled the transformer blocks during this render ({graphs} graph{'s' if graphs > 1 else ''}, "
                "included in its time); later renders reuse them, whatever the LoRAs or their weights."
            )
