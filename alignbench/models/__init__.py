"""Models: loading the policy and reference (built-in tiny model with its SFT stage, or a hub
model with optional LoRA), per-sequence log-probabilities (padded or packed), sampling, and the
Bradley-Terry reward model that PPO/RLOO optimise and that can serve as a judge."""
