"""The sampling benchmark behind ``ddpm-bench``: models, contenders and the timing harness.

Shipped in the wheel so ``ddpm-bench`` runs from an install; it imports torch, diffusers,
onnxruntime (and OpenVINO, if installed) only when a benchmark runs.
"""
