"""Scoring: local scores computed as the organizers do (scoring), the one metric registry (metrics), COMET in its
own environment (comet_env, comet_worker)."""
