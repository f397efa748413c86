"""Device side: numpy + tokenizers + onnxruntime (or tensorrt) only. Never imports torch.

``from kdeploy.runtime import Encoder, Classifier, open_model`` loads a run's packaged model
(or any kdeploy model dir) and returns numpy embeddings or labels + probabilities.
"""

from kdeploy.runtime.model import Classifier, Encoder, open_model

__all__ = ["Classifier", "Encoder", "open_model"]
