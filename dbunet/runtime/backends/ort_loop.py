"""A whole denoising loop on ONNX Runtime with the loop's tensors resident on the session's device.

The step graph (x, x0_prev, coeffs, conditioning -> x_next, x0) runs N times. Every tensor lives in an OrtValue
on the session's device at an address that stays the same from image to image: the conditioning is copied in
once per image, the coefficient row once per step, and x / x0 alternate between two buffer pairs (step i reads
what step i-1 wrote, nothing goes back to the host until the loop ends). Each shape gets its own session with
the symbolic dims pinned, so ONNX Runtime folds the shape arithmetic away and, on its CUDA provider, can capture
each parity's run as a CUDA graph (`gpu_graph_id` 1 and 2) and replay it for every later step and image.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dbunet.architectures.base import GUIDED_STEPS
from dbunet.generation import Conditioning, Step
from dbunet.runtime.backends.onnxruntime import OrtGraph
from dbunet.runtime.stages import GraphStages, conditioning_feeds

log = logging.getLogger(__name__)

STATE = (("x", "x_next"), ("x0_prev", "x0"))  # (input, output) pairs that carry over between steps
GRAPH_IDS = (1, 2)  # ONNX Runtime's default capture id is 0 and it asks callers not to set it


@dataclass
class _Buffers:
    """One shape's pinned session and its device-resident tensors."""

    graph: OrtGraph
    values: dict[str, object]  # input name -> OrtValue (conditioning and coeffs)
    state: dict[str, list]  # x / x0_prev -> the two OrtValues the steps alternate between
    bindings: list  # IOBinding per parity: step i uses bindings[i % 2]
    run_options: list  # RunOptions per parity (the CUDA graph's id where the session captures)


class OrtStepLoop:
    """Runs a step graph's whole loop (dbunet.generation.WholeLoopStages) on `graph`'s file and device."""

    def __init__(self, graph: OrtGraph, cuda_graph: bool) -> None:
        self.graph, self.cuda_graph = graph, cuda_graph
        self.buffers: dict[tuple, _Buffers] = {}
        # one set of buffers per shape, and ONNX Runtime's CUDA graphs allow one thread per session: calls take turns
        self.lock = threading.Lock()

    def run(self, rows: np.ndarray, x: np.ndarray, fixed: Mapping[str, np.ndarray]) -> np.ndarray:
        """x after len(rows) steps (x0_prev starts at zero); `fixed`: the inputs every step shares."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        feeds = {"x": x, "x0_prev": x, "coeffs": rows[0], **fixed}
        sizes = self.graph.spec.check_feeds(feeds)
        with self.lock:
            b = self._buffers(sizes, feeds)
            for name, value in fixed.items():
                b.values[name].update_inplace(np.ascontiguousarray(value))
            b.state["x"][0].update_inplace(np.ascontiguousarray(x))
            b.state["x0_prev"][0].update_inplace(np.zeros_like(x))
            for i, row in enumerate(rows):
                b.values["coeffs"].update_inplace(row)
                b.graph.session.run_with_iobinding(b.bindings[i % 2], b.run_options[i % 2])
            # a copy: on the CPU, numpy() is a view of the buffer the next image overwrites
            return np.array(b.state["x"][len(rows) % 2].numpy(), dtype=np.float32, copy=True)

    def describe(self) -> dict[str, object]:
        """Per shape: whether its runs are CUDA graphs, and ONNX Runtime's reason where it refused them."""
        return {_label(key): {"device": b.graph.device, "cuda_graph": b.graph.cuda_graph,
                              "refused": b.graph.cuda_graph_refused} for key, b in self.buffers.items()}

    def _buffers(self, sizes: dict[str, int], feeds: Mapping[str, np.ndarray]) -> _Buffers:
        key = tuple(sorted(sizes.items()))
        if key not in self.buffers:
            graph = self.graph.pinned(sizes, self.cuda_graph)
            if graph.cuda_graph_refused:
                log.warning("%s at %s runs without CUDA graphs: %s", self.graph.spec.component, _label(key),
                            graph.cuda_graph_refused)
            self.buffers[key] = self._allocate(graph, feeds)
        return self.buffers[key]

    @staticmethod
    def _allocate(graph: OrtGraph, feeds: Mapping[str, np.ndarray]) -> _Buffers:
        import onnxruntime as ort

        def on_device(a: np.ndarray):
            return ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, graph.device, 0)

        carried = {name for pair in STATE for name in pair}
        values = {name: on_device(a) for name, a in feeds.items() if name not in carried}
        state = {name: [on_device(feeds[name]) for _ in GRAPH_IDS] for name, _ in STATE}
        bindings, run_options = [], []
        for parity, graph_id in enumerate(GRAPH_IDS):
            binding = graph.session.io_binding()
            for name, value in values.items():
                binding.bind_ortvalue_input(name, value)
            for name, out in STATE:
                binding.bind_ortvalue_input(name, state[name][parity])
                binding.bind_ortvalue_output(out, state[name][1 - parity])
            options = ort.RunOptions()
            if graph.cuda_graph:
                options.add_run_config_entry("gpu_graph_id", str(graph_id))
            bindings.append(binding)
            run_options.append(options)
        return _Buffers(graph, values, state, bindings, run_options)

    def close(self) -> None:
        for b in self.buffers.values():
            b.graph.close()
        self.buffers.clear()


def _label(key: tuple) -> str:
    return ", ".join(f"{dim}={size}" for dim, size in key)


class OrtLoopStages(GraphStages):
    """GraphStages whose denoising loops each run as an OrtStepLoop (dbunet.generation.WholeLoopStages); every
    other stage, and single steps, run on the graphs as loaded."""

    whole_loops = True

    def __init__(self, graphs: dict[str, OrtGraph], tokenizers, boxes: bool = True, cuda_graph: bool = False) -> None:
        super().__init__(graphs, tokenizers, boxes)
        self.loops = {name: OrtStepLoop(graphs[name], cuda_graph)
                      for name in (*GUIDED_STEPS, "refiner_step") if name in graphs}

    def denoise_loop(self, steps: list[Step], x: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> np.ndarray:
        fixed = conditioning_feeds(cond, self.boxes and component == "dbunet_step")
        return self.loops[component].run(np.stack([s.row for s in steps]), x, fixed)

    def refiner_loop(self, steps: list[Step], x: np.ndarray, z_dis: np.ndarray) -> np.ndarray:
        return self.loops["refiner_step"].run(np.stack([s.row for s in steps]), x, {"z_dis": z_dis})

    def close(self) -> None:
        for loop in self.loops.values():
            loop.close()
        super().close()
