"""Data: reading preference files and hub data sets, parsing their formats into records,
dropping rows that cannot train (counted per reason), splitting by prompt, tokenising, and the
built-in task (prompts, SFT corpus, gold reward, the preference pairs sampled from the SFT model)."""
