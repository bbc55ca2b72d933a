"""Media files on disk: atomic writers, MP4 writing and reading, start images (no engine, no model)."""
