"""Training: one run's set-up (models, data, cached reference log-probs, evaluator), the offline
loop (DPO, IPO, KTO, SimPO), the online loop (PPO, RLOO), and the parts both loops share
(optimiser, accelerator, fault drills, evaluation triggers, run summary)."""
