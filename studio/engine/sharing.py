"""Sharing the manager's model between renders and work that runs between them (training).

:class:`SharedModel` is the part of :class:`~studio.engine.manager.PipelineManager` that a
training run uses: ``exclusive()`` holds the model for one step (after any queued render,
see :mod:`studio.engine.turns`) with exactly the adapters the step wants active, and a model
switch or a reloading memory change is refused while a run has its adapters in the model.
"""

from __future__ import annotations

import contextlib

from studio.engine import lora_ops
from studio.errors import ValidationError


class SharedModel:
    """Mixed into PipelineManager; uses its lock, pipe, components and fuse state."""

    @contextlib.contextmanager
    def exclusive(self, adapters: dict[str, dict[str, float]] | None = None):
        """Hold the unfused model for work between renders (a training step, caching), yielding the pipe.

        Waits until no render is queued, then activates exactly ``adapters`` (component →
        adapter → weight; none: the base model). The next render re-applies its own stack.
        """
        with self._lock.background():
            self._require_model()
            wanted = {c: dict(w) for c, w in (adapters or {}).items() if w}
            key = repr(sorted((c, sorted(w.items())) for c, w in wanted.items()))
            if self._compile.active:  # training needs peft layers: uncompiled until the run ends
                self._set_compiled(False)
            if self._held != key:
                if self._fused:
                    self._unfuse()
                for component in self.components().values():
                    model = getattr(self.pipe, component)
                    if getattr(model, "peft_config", None):
                        lora_ops.set_adapter_weights(model, wanted.get(component, {}))
                self._held = key
            yield self.pipe

    def _refuse_while_training(self) -> None:
        if self.training is not None:
            raise ValidationError(
                f"The training run {self.training} is using the model; stop it first (Train tab → Stop, "
                "or Ctrl-C), then switch the model or the memory mode."
            )
