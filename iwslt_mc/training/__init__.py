"""Training: the trainer (training), the data reader (data), what the stages share (common) and the calibration and held-out segments (calibration)."""
