"""Training: the trainer (training), the data reader (data), what the stages share (common) and the held-out and
calibration segments (calibration)."""
