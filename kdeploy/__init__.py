"""kdeploy: distil, compress, export and verify Hugging Face transformers for a target.

The package root imports nothing heavy: the device side (``kdeploy.runtime``, ``bench``,
``verify``) runs where only numpy, tokenizers and onnxruntime are installed.
"""

__version__ = "0.1.0"
