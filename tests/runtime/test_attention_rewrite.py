"""Attention as ONNX Runtime's MultiHeadAttention (dbunet.onnx_attention), rewritten when the ORT backend loads a
graph: which attentions it finds in real exports, that the rewritten graphs compute what the exported ones do,
what it leaves alone, and that memory stays linear in the tokens.

The graphs are real: the tiny preset's and a small SD 1.x folder's exports (conftest), and single attentions
exported here by torch.onnx as dbunet-export exports them."""

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from dbunet.export.graphs import sample_inputs
from dbunet.export.specs import default_sizes
from dbunet.manifest import Manifest
from dbunet.onnx_attention import MSFT, fuse_attention
from dbunet.runtime.backends.onnxruntime import OrtBackend


def _attention_onnx(path, heads=4, head=8, scale=None, mask=False):
    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            b, s, _ = q.shape
            q4, k4, v4 = (x.view(b, x.shape[1], heads, -1).transpose(1, 2) for x in (q, k, v))
            bias = torch.zeros(s, k.shape[1]) if mask else None
            out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias, scale=scale)
            return out.transpose(1, 2).reshape(b, s, -1)

    args = (torch.randn(2, 16, heads * head), torch.randn(2, 8, heads * head), torch.randn(2, 8, heads * 2 * head))
    torch.onnx.export(Attention(), args, str(path), dynamo=False, opset_version=18, input_names=["q", "k", "v"],
                      output_names=["out"], dynamic_axes={"q": {1: "s"}, "k": {1: "l"}, "v": {1: "l"}})
    return onnx.load(str(path))


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _feeds(tokens=64, keys=40, heads=4, head=8):
    rng = np.random.default_rng(0)
    return {"q": rng.standard_normal((2, tokens, heads * head), dtype=np.float32),
            "k": rng.standard_normal((2, keys, heads * head), dtype=np.float32),
            "v": rng.standard_normal((2, keys, heads * 2 * head), dtype=np.float32)}


@pytest.mark.parametrize("scale", [None, 0.05])
def test_one_attention_becomes_one_node_with_the_same_result(tmp_path, scale):
    """torch.onnx's scaled_dot_product_attention (default scale: the sqrt chain; a given one: constants), with a
    value head twice the query's: one MultiHeadAttention, the scores and softmax gone, the output the same."""
    model = _attention_onnx(tmp_path / "a.onnx", scale=scale)
    feeds = _feeds()
    want = _run(model, feeds)
    report = fuse_attention(model)
    assert report.fused == {"pattern": 1} and not report.left
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops
    mha = next(n for n in model.graph.node if n.op_type == "MultiHeadAttention")
    assert mha.domain == MSFT and not mha.input[3:]  # no mask, no bias: the flash path
    got = _run(model, feeds)
    # measured: 2e-7 for values of magnitude ~3 (FP32; the flash kernel sums in another order)
    assert np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()


def test_an_attention_with_a_mask_is_left_as_it_is(tmp_path):
    model = _attention_onnx(tmp_path / "a.onnx", mask=True)
    before = model.SerializeToString()
    report = fuse_attention(model)
    assert report.total == 0 and "a mask or bias" in report.left[0]
    assert model.SerializeToString() == before


def test_a_dry_run_counts_and_changes_nothing(tmp_path):
    model = _attention_onnx(tmp_path / "a.onnx")
    before = model.SerializeToString()
    assert fuse_attention(model, rewrite=False).fused == {"pattern": 1}
    assert model.SerializeToString() == before


def _graphs_agree(artifacts, precision, bound):
    """Every graph of an export, exported form vs rewritten, on the exporter's sample inputs: the rewrite's
    counts per component, and the largest difference relative to the output's magnitude."""
    manifest = Manifest.read(artifacts)
    found = {}
    for artifact in manifest.artifacts:
        if artifact.precision != precision:
            continue
        feeds = sample_inputs(artifact.spec, default_sizes(manifest.config, 2), manifest.config.text.vocab_size)
        plain = OrtBackend("cpu", fuse_attention=False).load(artifacts / artifact.path, artifact.spec)
        fused = OrtBackend("cpu").load(artifacts / artifact.path, artifact.spec)
        for a, b in zip(plain.run(feeds), fused.run(feeds), strict=True):
            assert np.abs(a - b).max() <= bound * max(1.0, np.abs(a).max()), (artifact.component, precision)
        found[artifact.component] = fused.attention.fused
    return found


def test_the_db_unet_export_runs_every_attention_as_one_node(tiny_artifacts):
    # measured (FP32): 7e-6 relative on the step graph, 1e-6 on the per-call UNet
    found = _graphs_agree(tiny_artifacts, "fp32", 1e-4)
    # the DB-UNet: its SpatialCrossAttention nodes and its transformer blocks' plain attentions; the VAE's
    # mid-block attention; the text encoder's causal attention and the refiner's GAE have none it rewrites
    assert found["dbunet_step"] == found["dbunet"] and found["dbunet"]["custom"] == 3
    assert found["dbunet"]["pattern"] == 20 and found["vae_decoder"] == {"pattern": 1}
    assert found["text_encoder"] == {} and found["refiner_step"] == {}


def test_fp16_graphs_are_rewritten_too(tiny_artifacts):
    # measured: 9e-4 relative (FP16 arithmetic in both forms)
    found = _graphs_agree(tiny_artifacts, "fp16", 1e-2)
    assert found["dbunet_step"] == {"pattern": 20, "custom": 3}


def test_a_plain_unet_and_its_vae_are_rewritten(sd1_artifacts):
    # measured (FP32): 6e-6 relative on the step graph
    found = _graphs_agree(sd1_artifacts, "fp32", 1e-4)
    assert found["dbunet_step"] == {"pattern": 8} and found["vae_decoder"] == {"pattern": 1}


_MEMORY = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feeds = {"q": rng.standard_normal((2, 4096, 320), dtype=np.float32),
         "k": rng.standard_normal((2, 4096, 320), dtype=np.float32),
         "v": rng.standard_normal((2, 4096, 640), dtype=np.float32)}
def status(field):  # kB -> MB; VmHWM is the peak (ru_maxrss would start from the parent's, copied over exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
before = status("VmRSS")
session.run(None, feeds)
print(status("VmHWM") - before)
"""


def test_memory_stays_linear_in_the_tokens(tmp_path):
    """sd15's first-level attention at 512x512 (batch 2, 8 heads, 4096 tokens): one score tensor is 1 GiB
    (2 x 8 x 4096^2 x 4 B). Exported, ONNX Runtime materialises it (measured: the run adds 1150 MB to the peak
    RSS); rewritten, about its inputs' and output's size (measured: 65 MB). Each in a fresh process that imports
    nothing but ONNX Runtime and numpy: the peak after the run less what was resident before it."""
    added = {}
    for form in ("plain", "fused"):
        model = _attention_onnx(tmp_path / "a.onnx", heads=8, head=40)
        fuse_attention(model, rewrite=form == "fused")
        onnx.save(model, str(tmp_path / f"{form}.onnx"))
        proc = subprocess.run([sys.executable, "-c", _MEMORY, str(tmp_path / f"{form}.onnx")], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        added[form] = float(proc.stdout.strip().splitlines()[-1])
    assert added["plain"] > 900 and added["fused"] < 200, added


def test_parity_reports_cover_the_rewritten_graphs(tiny_artifacts):
    """dbunet-export measures each graph against PyTorch twice where ONNX Runtime rewrites its attentions: as
    written, and as the ONNX Runtime backend runs it; both within the precision's tolerance."""
    manifest = Manifest.read(tiny_artifacts)
    for precision in ("fp32", "fp16"):
        parity = manifest.find("dbunet_step", precision).parity
        rewritten = parity["onnxruntime"]
        assert rewritten["attention"] == {"pattern": 20, "custom": 3} and rewritten["passed"] and parity["passed"]
        assert rewritten["max_rel"] <= rewritten["tolerance"]
    assert "onnxruntime" not in manifest.find("text_encoder", "fp32").parity  # nothing rewritten there
