"""Bench: `alignbench bench`, speed and memory measured side by side with TRL's DPOTrainer in
one run, written to bench.json."""
