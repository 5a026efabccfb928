"""The runtime hashes every file of an artifact, external weight data included, before loading it."""

import json
import shutil

import onnx
import pytest

from dbunet.errors import ArtifactError
from dbunet.manifest import sha256_file
from dbunet.runtime import Pipeline


@pytest.fixture
def external_data_artifacts(tiny_artifacts, tmp_path):
    """A copy whose fp32 GAE keeps its weights in an external data file, as graphs over 2 GB do."""
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    graph = art / "fp32" / "gae.onnx"
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="gae.onnx.data", size_threshold=1024)  # the exporter's threshold
    files = ["fp32/gae.onnx", "fp32/gae.onnx.data"]
    manifest = json.loads((art / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["component"] == "gae" and a["precision"] == "fp32")
    entry["files"], entry["sha256"] = files, {f: sha256_file(art / f) for f in files}
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def test_intact_external_data_loads(external_data_artifacts):
    Pipeline.from_artifacts(external_data_artifacts, precision="fp32").close()


def test_changed_external_data_is_refused(external_data_artifacts):
    data = external_data_artifacts / "fp32" / "gae.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one weight: ONNX Runtime would load it without complaint
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"gae\.onnx\.data is corrupted"):
        Pipeline.from_artifacts(external_data_artifacts, precision="fp32")


def test_missing_external_data_is_refused(external_data_artifacts):
    (external_data_artifacts / "fp32" / "gae.onnx.data").unlink()
    with pytest.raises(ArtifactError, match=r"missing artifact file .*gae\.onnx\.data"):
        Pipeline.from_artifacts(external_data_artifacts, precision="fp32")


def test_paths_are_shown_as_the_user_named_them_not_by_the_pinned_descriptor(tiny_artifacts, tmp_path, caplog):
    """A run reaches its artifacts through an open descriptor (/proc/self/fd/N on Linux); what it prints must name
    the directory the user gave, wherever the path sits in the message."""
    import logging

    from dbunet.manifest import PinnedDirectory, shown

    pinned = PinnedDirectory(tmp_path)
    try:
        if pinned.fd is None:
            pytest.skip("no /proc/self/fd here: directories are not pinned, so there is nothing to translate")
        inner = f"{pinned.path}/fp32/gae.onnx"
        assert shown(inner) == f"{tmp_path}/fp32/gae.onnx"
        assert shown(f"[Errno 2] No such file: '{inner}'") == f"[Errno 2] No such file: '{tmp_path}/fp32/gae.onnx'"
        assert shown(f"{pinned.path}0/x") == f"{pinned.path}0/x"  # another descriptor's number is not this one
    finally:
        pinned.close()
    assert shown(inner) == inner  # closed: nothing left to translate
    with caplog.at_level(logging.INFO, logger="dbunet.runtime.pipeline"):
        Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32").close()
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert loaded and loaded[0].startswith(f"loaded {tiny_artifacts} (")
