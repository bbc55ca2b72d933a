"""The stack doctor: how strong each LoRA really is, which ones fight or double up, and what the stack costs.

Computed from the weights the studio already reads, before rendering:

- :mod:`studio.doctor.factors` reads a LoRA file into per-module low-rank factors (the
  manager's own reader and converters) and takes exact inner products of weight changes
  from them, with no full-size ``ΔW``;
- :mod:`studio.engine.norms` holds the base weights' norms (read once when a model loads);
- :mod:`studio.doctor.effect` gives each LoRA's relative effect ``‖ΔW‖/‖W‖`` and its flags
  (``no-effect``, ``strong``/``weak`` against the library, a suggested weight);
- :mod:`studio.doctor.pairs` gives the cosine of two LoRAs' changes (``conflict``/``redundant``);
- :mod:`studio.doctor.cost` counts memory (from the VRAM estimator) and FLOPs, and
  :mod:`studio.doctor.measure` times a forward with and without the stack;
- :mod:`studio.doctor.examine` runs it over a stack (cached per file and model,
  :mod:`studio.doctor.cache`) and :mod:`studio.doctor.report` is the result.
"""
