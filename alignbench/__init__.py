"""alignbench: compare LLM alignment methods (PPO, DPO, IPO, KTO, SimPO) fairly."""

__version__ = "0.1.0"
