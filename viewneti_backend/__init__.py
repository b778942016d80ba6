"""ViewNeTI: view control of a frozen Stable-Diffusion-architecture model through learned text tokens."""

__version__ = "0.1.0"
