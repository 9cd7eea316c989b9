"""Workstation side: ImageNet EfficientNet backbones to multi-level TFLite feature models (needs TensorFlow)."""
