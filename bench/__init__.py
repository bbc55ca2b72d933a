"""Benchmarks of the studio's LoRA performance (not part of the test run); see bench/README.md."""
