"""Inline a graph's model-local functions into standard ops (torch-free; needs the onnx package).

Used by `dbunet-export --decomposed` and by the OpenVINO backend, whose ONNX reader ignores model-local
functions. onnx's inliner works on the serialized model, and protobuf cannot serialize past 2 GB (sd15's
DB-UNet is 3.4 GB in FP32): the weights are lifted out of the graph while it inlines and put back by name
after. Inlining renames only what is inside functions, never the main graph's initializers.
"""

from __future__ import annotations

from dbunet.errors import ArtifactError

CUSTOM_DOMAIN = "dbunet"


def inline_functions(model, domain: str = CUSTOM_DOMAIN):
    """The plain standard-op graph: every local function inlined, `domain`'s opset import gone.
    The argument is consumed: its weights move to the result (no second copy in memory)."""
    from onnx import inliner

    lifted = {}
    for t in model.graph.initializer:
        if t.raw_data:
            lifted[t.name] = t.raw_data
            t.ClearField("raw_data")
    try:
        model = inliner.inline_local_functions(model)
    finally:
        if lifted:  # into the result, or back into the argument when inlining failed
            for t in model.graph.initializer:
                if t.name in lifted:
                    t.raw_data = lifted.pop(t.name)
    if lifted:
        raise ArtifactError(f"inlining lost initializers: {sorted(lifted)[:5]}")
    keep = [i for i in model.opset_import if i.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model
