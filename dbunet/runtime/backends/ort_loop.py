"""A whole denoising loop on ONNX Runtime with the loop's tensors resident on the session's device.

The step graph (x, x0_prev, coeffs, conditioning -> x_next, x0) runs N times. Every tensor lives in an OrtValue
on the session's device at an address that stays the same from image to image: the conditioning is copied in
once per image, the coefficient row once per step, and x / x0 alternate between two buffer pairs (step i reads
what step i-1 wrote, nothing goes back to the host until the loop ends). Each shape gets its own session with
the symbolic dims pinned, so ONNX Runtime folds the shape arithmetic away and, on its CUDA provider, can capture
each parity's run as a CUDA graph (`gpu_graph_id` 1 and 2) and replay it for every later step and image.

Each of those sessions holds the step graph's weights, so the shapes are kept few: box counts are padded to the
next power of two (padding slots have validity 0 and change nothing), and at most `max_shapes` sessions per step
graph stay, the least recently used released first. A server taking any size and box count stays bounded.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dbunet.architectures.base import GUIDED_STEPS
from dbunet.generation import Conditioning, Step
from dbunet.runtime.backends.onnxruntime import LOOP_SHAPES, OrtGraph
from dbunet.runtime.stages import GraphStages, conditioning_feeds, pad_box_slots

log = logging.getLogger(__name__)

STATE = (("x", "x_next"), ("x0_prev", "x0"))  # (input, output) pairs that carry over between steps
GRAPH_IDS = (1, 2)  # ONNX Runtime's default capture id is 0 and it asks callers not to set it


def box_slots(n: int, limit: int) -> int:
    """The box slots a request's n boxes run in: the next power of two, at most `limit` (the model's maximum), and
    one slot for no box: a session pinned to a zero-size box axis fails to load on ONNX Runtime 1.31 (its shape
    inference refuses the box constraint's Where, "Incompatible dimensions"; 1.32 loads it)."""
    return max(n, min(limit, 1 << max(n - 1, 0).bit_length()))


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

    def __init__(self, graph: OrtGraph, cuda_graph: bool, max_shapes: int = LOOP_SHAPES) -> None:
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be at least 1, got {max_shapes}")
        self.graph, self.cuda_graph, self.max_shapes = graph, cuda_graph, max_shapes
        self.buffers: OrderedDict[tuple, _Buffers] = OrderedDict()  # least recently used first
        # one set of buffers per shape, and ONNX Runtime's CUDA graphs allow one thread per session: calls take turns
        self.lock = threading.Lock()

    def run(self, rows: np.ndarray, x: np.ndarray, fixed: Mapping[str, np.ndarray]) -> np.ndarray:
        """x after len(rows) steps (x0_prev starts at zero); `fixed`: the inputs every step shares."""
        return self._steps(np.asarray(rows, dtype=np.float32), x, None, fixed)[0]

    def step(self, row: np.ndarray, x: np.ndarray, x0_prev: np.ndarray, fixed: Mapping[str, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray]:
        """One step on the same pinned session and buffers as the loops: (x_next, x0)."""
        return self._steps(np.asarray(row, dtype=np.float32)[None], x, x0_prev, fixed)

    def _steps(self, rows: np.ndarray, x: np.ndarray, x0_prev: np.ndarray | None,
               fixed: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(x, x0) after the steps; x0 only where x0_prev was given (a single step), else None."""
        rows = np.ascontiguousarray(rows)
        feeds = {"x": x, "x0_prev": x if x0_prev is None else x0_prev, "coeffs": rows[0], **fixed}
        sizes = self.graph.spec.check_feeds(feeds)
        with self.lock:
            b = self._buffers(sizes, feeds)
            for name, value in fixed.items():
                b.values[name].update_inplace(np.ascontiguousarray(value))
            b.state["x"][0].update_inplace(np.ascontiguousarray(x))
            b.state["x0_prev"][0].update_inplace(np.zeros_like(x) if x0_prev is None else np.ascontiguousarray(x0_prev))
            for i, row in enumerate(rows):
                b.values["coeffs"].update_inplace(row)
                b.graph.session.run_with_iobinding(b.bindings[i % 2], b.run_options[i % 2])
            # copies: on the CPU, numpy() is a view of the buffer the next image overwrites
            last = len(rows) % 2
            x = np.array(b.state["x"][last].numpy(), dtype=np.float32, copy=True)
            x0 = None if x0_prev is None else np.array(b.state["x0_prev"][last].numpy(), dtype=np.float32, copy=True)
            return x, x0

    def describe(self) -> dict[str, object]:
        """Per shape: whether its runs are CUDA graphs, and ONNX Runtime's reason where it refused them."""
        return {_label(key): {"device": b.graph.device, "cuda_graph": b.graph.cuda_graph,
                              "refused": b.graph.cuda_graph_refused} for key, b in self.buffers.items()}

    def _buffers(self, sizes: dict[str, int], feeds: Mapping[str, np.ndarray]) -> _Buffers:
        key = tuple(sorted(sizes.items()))
        if key in self.buffers:
            self.buffers.move_to_end(key)
        else:
            while len(self.buffers) >= self.max_shapes:
                old, released = self.buffers.popitem(last=False)
                released.graph.close()
                log.info("%s: released the session for %s (at most %d shapes are kept)", self.graph.spec.component,
                         _label(old), self.max_shapes)
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
    """GraphStages whose step graphs run as OrtStepLoops (dbunet.generation.WholeLoopStages), single steps included,
    so each step graph is resident once per shape: the session it was loaded in (which checked it against its
    manifest) is released. Every other stage runs on the graphs as loaded."""

    whole_loops = True

    def __init__(self, graphs: dict[str, OrtGraph], tokenizers, boxes: bool = True, cuda_graph: bool = False,
                 max_boxes: int = 0, max_shapes: int = LOOP_SHAPES) -> None:
        super().__init__(graphs, tokenizers, boxes)
        self.max_boxes = max_boxes
        self.loops = {name: OrtStepLoop(graphs[name], cuda_graph, max_shapes)
                      for name in (*GUIDED_STEPS, "refiner_step") if name in graphs}
        for name in self.loops:
            graphs[name].close()  # its weights would otherwise stay resident beside each pinned session's

    def _conditioning(self, cond: Conditioning, component: str) -> dict[str, np.ndarray]:
        boxes = self.boxes and component == "dbunet_step"
        if boxes:
            cond = pad_box_slots(cond, box_slots(cond.boxes.shape[1], self.max_boxes))
        return conditioning_feeds(cond, boxes)

    def denoise_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> tuple[np.ndarray, np.ndarray]:
        return self.loops[component].step(step.row, x, x0_prev, self._conditioning(cond, component))

    def refiner_step(self, step: Step, x: np.ndarray, x0_prev: np.ndarray, z_dis: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        return self.loops["refiner_step"].step(step.row, x, x0_prev, {"z_dis": z_dis})

    def denoise_loop(self, steps: list[Step], x: np.ndarray, cond: Conditioning,
                     component: str = "dbunet_step") -> np.ndarray:
        rows = np.stack([s.row for s in steps])
        return self.loops[component].run(rows, x, self._conditioning(cond, component))

    def refiner_loop(self, steps: list[Step], x: np.ndarray, z_dis: np.ndarray) -> np.ndarray:
        return self.loops["refiner_step"].run(np.stack([s.row for s in steps]), x, {"z_dis": z_dis})

    def close(self) -> None:
        for loop in self.loops.values():
            loop.close()
        super().close()
