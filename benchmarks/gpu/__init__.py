"""Benchmarks that need a CUDA GPU (vLLM); see each module's docstring for how to run it."""
