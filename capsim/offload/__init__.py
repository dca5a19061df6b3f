"""Expert offloading: caches of experts in GPU memory replayed over routing traces (pure numpy)."""
