"""ONNX graph tools (need the ``onnx`` package): GEMM layers and their 2:4 / bit-width
(``layers``), weight statistics (``weights``), TensorRT's explicit-quantization rules on a
Q/DQ graph (``qdq_lint``) and the structural checks export and quantize run (``checks``)."""
