"""Risk analysis of a batch: the LLM, the fallback scorer, prompts, baselines, calibration."""
