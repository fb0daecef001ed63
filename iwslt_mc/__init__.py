"""iwslt-mc: submissions for the IWSLT model-compression track (Qwen2-Audio)."""

__version__ = "0.1.0"
