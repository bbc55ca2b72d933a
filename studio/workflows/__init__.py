"""The user's workflows on top of the engine: presets, history, comparisons (and batches, schedules to come)."""
