"""Whole-step graphs (docs/architecture.md 3.4): a per-call UNet graph wrapped in its step's FP32 prologue and epilogue.

    dbunet_step   x, x0_prev, coeffs, text, boxes, box_phrases, box_valid -> x_next, x0
                  (SDXL: text, text_embeds, time_ids; its refiner's latent_refiner_step the same)
    refiner_step  x, x0_prev, coeffs, z_dis                                -> x_next, x0

prologue  sample = c_in * x, repeated to the text batch (2: [negative; prompt], 1: no guidance);
          timestep and box scale taken from the coefficient row
UNet      the exported per-call graph, unchanged: its custom nodes, local functions and weights
epilogue  eps = eps_u + g (eps_c - eps_u) (with a batch of 1, eps itself), then the generic update
          x0 = clip(d x + e eps, -r, r), x_next = p x + q eps + u x0 + v x0_prev

The step is composed in ONNX instead of traced: ONNX Runtime's FP16 converter casts every float graph
input to FP16 before its first consumer, so a traced step would round x, x0_prev and the row to FP16 even
around an FP32 update. Composed around the FP16 UNet (whose boundary stays FP32), the update is FP32 by
construction, and the UNet is not traced a second time. The modules below (`DBUNetStepGraph` and its siblings)
are the PyTorch reference of the same step, for the parity report.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from dbunet.architectures.base import GUIDED_STEPS
from dbunet.errors import ExportError
from dbunet.iospec import GraphSpec
from dbunet.models.cascade import Cascade
from dbunet.schedulers.table import COLUMN, ROW

# step graph -> the per-call UNet it wraps
STEP_OF = {"dbunet_step": "dbunet", "latent_refiner_step": "latent_refiner", "refiner_step": "refiner_unet"}
_P = "step/"  # prefix of every tensor and node the composition adds


# -- the PyTorch reference of one step -----------------------------------------------------------------
def sampler_update(c: dict[str, Tensor], x: Tensor, eps: Tensor, x0_prev: Tensor) -> tuple[Tensor, Tensor]:
    x0 = torch.clamp(c["d"] * x + c["e"] * eps, -c["clip"], c["clip"])
    return c["p"] * x + c["q"] * eps + c["u"] * x0 + c["v"] * x0_prev, x0


def guided_step(c: dict[str, Tensor], x: Tensor, x0_prev: Tensor, n: int,
                denoise: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """One CFG step: `denoise(sample, timestep)` over the batch of n conditionings, guidance, the update."""
    eps = denoise((c["c_in"] * x).expand(n, -1, -1, -1), c["timestep"].expand(n))  # (n, C, h, w)
    eps = eps[:1] + c["guidance"] * (eps[-1:] - eps[:1])  # n = 1: eps itself
    return sampler_update(c, x, eps, x0_prev)


class DBUNetStepGraph(nn.Module):
    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.unet

    def forward(self, x, x0_prev, coeffs, text, boxes, box_phrases, box_valid) -> tuple[Tensor, Tensor]:
        c = dict(zip(ROW, coeffs.unbind(0), strict=True))
        return guided_step(c, x, x0_prev, text.shape[0],
                           lambda s, t: self.unet(s, t, text, boxes, box_phrases, box_valid, c["box_scale"]))


class RefinerStepGraph(nn.Module):
    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.refiner.unet

    def forward(self, x, x0_prev, coeffs, z_dis) -> tuple[Tensor, Tensor]:
        c = dict(zip(ROW, coeffs.unbind(0), strict=True))
        eps = self.unet(c["c_in"] * x, c["timestep"].expand(x.shape[0]), z_dis)
        return sampler_update(c, x, eps, x0_prev)


class SDUNetStepGraph(nn.Module):
    """--arch sd1: the same step around a plain SD UNet (no box inputs)."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.unet

    def forward(self, x, x0_prev, coeffs, text) -> tuple[Tensor, Tensor]:
        c = dict(zip(ROW, coeffs.unbind(0), strict=True))
        return guided_step(c, x, x0_prev, text.shape[0], lambda s, t: self.unet(s, t, text))


class SDXLUNetStepGraph(nn.Module):
    """--arch sdxl: the step around an SDXL UNet; its micro-conditioning rides with the text (batch 1 or 2)."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__()
        self.unet = cascade.unet

    def forward(self, x, x0_prev, coeffs, text, text_embeds, time_ids) -> tuple[Tensor, Tensor]:
        c = dict(zip(ROW, coeffs.unbind(0), strict=True))
        return guided_step(c, x, x0_prev, text.shape[0], lambda s, t: self.unet(s, t, text, text_embeds, time_ids))


class LatentRefinerStepGraph(SDXLUNetStepGraph):
    """SDXL's refiner: the same guided step around its own UNet."""

    def __init__(self, cascade: Cascade) -> None:
        nn.Module.__init__(self)
        self.unet = cascade.latent_refiner


STEP_MODULES = {"dbunet_step": DBUNetStepGraph, "latent_refiner_step": LatentRefinerStepGraph,
                "refiner_step": RefinerStepGraph}


# exporter hooks: an architecture's own step graph, where it differs from the DB-UNet cascade's
ARCH_STEP_MODULES: dict[tuple[str, str], type[nn.Module]] = {("sd1", "dbunet_step"): SDUNetStepGraph,
                                                              ("sdxl", "dbunet_step"): SDXLUNetStepGraph}


def step_module(name: str, cascade: Cascade, arch: str) -> nn.Module:
    return ARCH_STEP_MODULES.get((arch, name), STEP_MODULES[name])(cascade)


# -- composition in ONNX ---------------------------------------------------------------------------------
def _node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=_P + output.removeprefix(_P), **attrs)


def _coefficients(nodes: list, consts: list) -> dict[str, str]:
    """One scalar tensor per row entry: Gather with a scalar index gives a rank-0 result."""
    names = {}
    for name in ROW:
        index = f"{_P}index_{name}"
        consts.append(helper.make_tensor(index, TensorProto.INT64, [], [COLUMN[name]]))
        names[name] = f"{_P}{name}"
        nodes.append(_node("Gather", ["coeffs", index], names[name], axis=0))
    return names


def _epilogue(nodes: list, c: dict[str, str], eps: str) -> None:
    """x0 = clip(d x + e eps, -r, r); x_next = p x + q eps + u x0 + v x0_prev."""
    def mul(a, b, out):
        nodes.append(_node("Mul", [a, b], _P + out))
        return _P + out

    def add(a, b, out):
        nodes.append(_node("Add", [a, b], _P + out))
        return _P + out

    nodes.append(_node("Neg", [c["clip"]], _P + "neg_clip"))
    raw = add(mul(c["d"], "x", "dx"), mul(c["e"], eps, "e_eps"), "x0_raw")
    nodes.append(helper.make_node("Clip", [raw, _P + "neg_clip", c["clip"]], ["x0"], name=_P + "x0"))
    terms = add(add(mul(c["p"], "x", "px"), mul(c["q"], eps, "q_eps"), "pq"),
                add(mul(c["u"], "x0", "u_x0"), mul(c["v"], "x0_prev", "v_x0_prev"), "uv"), "x_next_sum")
    nodes.append(helper.make_node("Identity", [terms], ["x_next"], name=_P + "x_next"))


def compose_step(name: str, unet: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """The step graph `name` around a per-call UNet graph (FP32, or FP16 with FP32 inputs and outputs)."""
    if name not in STEP_OF:
        raise ExportError(f"no step graph {name!r}; valid: {', '.join(STEP_OF)}")
    unet_inputs = {v.name for v in unet.graph.input}
    nodes: list[onnx.NodeProto] = []
    consts: list[onnx.TensorProto] = []
    c = _coefficients(nodes, consts)
    nodes.append(_node("Mul", [c["c_in"], "x"], _P + "x_in"))
    if name in GUIDED_STEPS:
        # prologue: the CFG batch follows the text batch; the UNet reads sample, timestep and box_scale
        consts += [helper.make_tensor(_P + "zero", TensorProto.INT64, [1], [0]),
                   helper.make_tensor(_P + "one", TensorProto.INT64, [1], [1]),
                   helper.make_tensor(_P + "minus_one", TensorProto.INT64, [1], [-1]),
                   helper.make_tensor(_P + "end", TensorProto.INT64, [1], [2**62])]
        nodes += [
            _node("Shape", ["text"], _P + "n", start=0, end=1),
            _node("Shape", ["x"], _P + "x_dims", start=1),
            _node("Concat", [_P + "n", _P + "x_dims"], _P + "batch_shape", axis=0),
            helper.make_node("Expand", [_P + "x_in", _P + "batch_shape"], ["sample"], name=_P + "set_sample"),
            helper.make_node("Expand", [c["timestep"], _P + "n"], ["timestep"], name=_P + "set_timestep"),
        ]
        expected = {"sample", "timestep", "text"}
        if "box_scale" in unet_inputs:  # the DB-UNet; a plain SD UNet (--arch sd1) takes no boxes
            nodes.append(helper.make_node("Identity", [c["box_scale"]], ["box_scale"], name=_P + "set_box_scale"))
            expected |= {"boxes", "box_phrases", "box_valid", "box_scale"}
        if "time_ids" in unet_inputs:  # SDXL: its micro-conditioning comes in with the text, batch for batch
            expected |= {"text_embeds", "time_ids"}
        body_start = len(nodes)
        nodes += list(unet.graph.node)
        # epilogue: guidance over the batch's first (unconditional) and last (conditional) halves
        nodes += [
            _node("Slice", ["noise", _P + "zero", _P + "one", _P + "zero"], _P + "eps_u"),
            _node("Slice", ["noise", _P + "minus_one", _P + "end", _P + "zero"], _P + "eps_c"),
            _node("Sub", [_P + "eps_c", _P + "eps_u"], _P + "eps_delta"),
            _node("Mul", [c["guidance"], _P + "eps_delta"], _P + "eps_guided_delta"),
            _node("Add", [_P + "eps_u", _P + "eps_guided_delta"], _P + "eps"),
        ]
        eps = _P + "eps"
    else:
        nodes += [
            _node("Shape", ["x"], _P + "n", start=0, end=1),
            helper.make_node("Identity", [_P + "x_in"], ["sample"], name=_P + "set_sample"),
            helper.make_node("Expand", [c["timestep"], _P + "n"], ["timestep"], name=_P + "set_timestep"),
        ]
        expected = {"sample", "timestep", "z_dis"}
        body_start = len(nodes)
        nodes += list(unet.graph.node)
        eps = "noise"
    if unet_inputs != expected or [v.name for v in unet.graph.output] != ["noise"]:
        raise ExportError(f"{name}: the UNet graph takes {sorted(unet_inputs)} -> "
                          f"{[v.name for v in unet.graph.output]}, expected {sorted(expected)} -> ['noise']")
    _epilogue(nodes, c, eps)
    body_end = body_start + len(unet.graph.node)
    ours = {o for n in nodes[:body_start] + nodes[body_end:] for o in n.output} | {t.name for t in consts}
    clash = ours & ({o for n in unet.graph.node for o in n.output} | {t.name for t in unet.graph.initializer})
    if clash:
        raise ExportError(f"{name}: tensor names clash between the step and its UNet: {sorted(clash)}")

    def value_info(t):
        return helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.dims))

    graph = helper.make_graph(
        nodes, name, [value_info(t) for t in spec.inputs], [value_info(t) for t in spec.outputs],
        initializer=[*consts, *unet.graph.initializer], value_info=list(unet.graph.value_info),
    )
    model = helper.make_model(graph, opset_imports=list(unet.opset_import), ir_version=unet.ir_version,
                              functions=list(unet.functions), producer_name="dbunet")
    return model
