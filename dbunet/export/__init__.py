"""PyTorch model -> ONNX graphs with parity reports, FP16 copies and the manifest (needs the export extra)."""
