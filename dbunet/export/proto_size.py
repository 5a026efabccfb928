"""How big an ONNX model is without serialising it: protobuf refuses a message past 2 GB, so a model over that
keeps its weights in a file beside it, and whatever serialises the whole model (shape inference) is skipped."""

from __future__ import annotations

import onnx

TWO_GB = 2**31 - 1


def approx_size(model: onnx.ModelProto) -> int:
    """Bytes of the weights and nodes (ModelProto.ByteSize itself fails past protobuf's 2 GB limit)."""
    weights = sum(len(t.raw_data) or 4 * len(t.float_data) for t in model.graph.initializer)
    return weights + sum(len(n.SerializeToString()) for n in model.graph.node)
