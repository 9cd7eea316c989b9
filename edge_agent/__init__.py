"""Few-shot visual inspection on an edge camera: embed frames with a TFLite model, judge them, publish verdicts."""

__version__ = "0.1.0"
