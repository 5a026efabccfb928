"""The PyTorch-side switch routes TorchPipeline's custom ops through the Triton kernels.

Run on the CPU under Triton's interpreter in a separate process (the switch is process-wide)."""

import os
import subprocess
import sys

from triton_interpreter import require_triton

require_triton()

SCRIPT = """
import numpy as np
from dbunet.models.cascade import load_model
from dbunet.models.pipeline import TorchPipeline
from dbunet.plugins import launch, torch_ops

pipe = TorchPipeline(load_model({model!r}))
kwargs = dict(boxes=["0.1,0.1,0.6,0.8:a cat"], seed=3, steps=2, refiner_steps=1, height=64, width=64)
reference = pipe("a cat", **kwargs)

calls = {{}}
for name in ("box_constraint", "spatial_cross_attention", "channel_cross_attention"):
    original = getattr(launch, name)
    def counted(*args, _name=name, _fn=original):
        calls[_name] = calls.get(_name, 0) + 1
        return _fn(*args)
    setattr(launch, name, counted)
torch_ops.use_triton_kernels("cpu")
fused = pipe("a cat", **kwargs)
rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
print(calls["box_constraint"], calls["spatial_cross_attention"], calls["channel_cross_attention"],
      rel(fused.latents, reference.latents), rel(fused.pixels, reference.pixels))
# switched back: the references again, not one launch more; and on again: the kernels' image again
launched = dict(calls)
torch_ops.use_triton_kernels("cpu", enabled=False)
off = pipe("a cat", **kwargs)
print(calls == launched, np.array_equal(off.pixels, reference.pixels))
torch_ops.use_triton_kernels("cpu")
again = pipe("a cat", **kwargs)
print(np.array_equal(again.pixels, fused.pixels), calls["box_constraint"] == 2 * launched["box_constraint"])
"""


def test_torch_pipeline_runs_on_the_kernels(tiny_model_dir):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(model=str(tiny_model_dir))], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    box, sca, cca, latents, pixels, no_launch, off_is_reference, on_is_fused, launched_again = proc.stdout.split()
    assert (no_launch, off_is_reference, on_is_fused, launched_again) == ("True",) * 4  # the switch, both ways
    # per step one guided-batch UNet call: 4 BoxConstraints (3 encoder layers + mid), 3 DCA layers
    assert (int(box), int(sca), int(cca)) == (2 * 4, 2 * 3, 2 * 3)
    # FP32 kernels vs the PyTorch ops through 2 steps, the VAE and a refiner step, relative to the range:
    # measured 1.4e-6 (latents) and 6.5e-6 (pixels); bounds ~7x
    assert float(latents) <= 1e-5 and float(pixels) <= 5e-5, (latents, pixels)
