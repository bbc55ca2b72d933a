"""Presets: named LoRA stacks with optional settings (schema, paths, import formats, the store)."""
