"""The torch-free runtime: reads an artifacts directory and runs the cascade.

Imports numpy, onnxruntime, tokenizers and pillow only (never torch, never dbunet.models or
dbunet.export): `Pipeline.from_artifacts(dir)(prompt, boxes=..., seed=...)`.
"""

from dbunet.runtime.pipeline import Pipeline

__all__ = ["Pipeline"]
