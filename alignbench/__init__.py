"""alignbench: compare LLM alignment methods fairly (the methods: `alignbench.methods.METHODS`)."""

__version__ = "0.1.0"
