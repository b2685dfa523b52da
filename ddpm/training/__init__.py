"""Training (torch): datasets, the DDPM trainer with EMA / AMP / DDP, and ``ddpm-train``.

Entry point: :func:`ddpm.training.trainer.train`. Importing this package is cheap (no torch)
so that ``ddpm-train --help`` stays instant.
"""
