"""Device side: numpy + tokenizers + onnxruntime (or tensorrt) only. Never imports torch."""
