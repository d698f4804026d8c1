"""Evaluation: the one evaluator every method goes through (policy vs reference samples on
held-out prompts, judged; sampled KL; held-out preference accuracy), the judges (gold reward,
reward models), and the statistics (intervals, paired tests, multiple-comparison correction)."""
