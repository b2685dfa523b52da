"""ddpm: train a denoising diffusion model, export it, and sample it fast anywhere.

Importing ``ddpm`` is cheap: it pulls in nothing heavier than the standard library.
"""

__version__ = "0.1.0"
