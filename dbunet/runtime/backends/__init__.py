"""The backends that run exported graphs (ONNX Runtime, OpenVINO) or engines (TensorRT); registry: dbunet.backends."""
