"""microbuild: sidecars and microbuilds for AI coding agents."""

__version__ = "0.1.0"
