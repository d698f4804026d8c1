"""Training: one run's set-up (models, data, cached reference log-probs, evaluator), the offline
loop and the online loop (the rows of `alignbench.methods.METHODS` say which), and the parts both loops share
(optimiser, accelerator, fault drills, evaluation triggers, run summary)."""
