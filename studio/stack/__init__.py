"""The typed LoRA stack and render settings every layer shares (versioned JSON, validation)."""
