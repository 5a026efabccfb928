"""Reliability and security of the artifacts and the runtime: interrupted and concurrent exports, untrusted
manifests and ONNX files, a Pipeline shared by threads."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from dbunet.errors import ArtifactError, DbunetError, ExportError
from dbunet.manifest import Manifest, sha256_file
from dbunet.onnx_refs import external_data_locations
from dbunet.runtime import Pipeline

REQUEST = dict(steps=3, refiner_steps=2, height=64, width=64, boxes=("0.1,0.1,0.6,0.7:a red cat",))


# -- a Pipeline shared by threads ----------------------------------------------------------------------------
def test_threads_sharing_one_pipeline_get_the_bytes_of_sequential_calls(tiny_artifacts):
    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32", threads=1)
    seeds = list(range(6))
    sequential = {s: pipe("a red cat", seed=s, **REQUEST).image for s in seeds}
    results, errors = {}, []

    def worker(seed: int) -> None:
        try:
            results[seed] = pipe("a red cat", seed=seed, **REQUEST).image
        except Exception as exc:  # noqa: BLE001 (the failure is what this test looks for)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s in seeds:
        np.testing.assert_array_equal(results[s], sequential[s])


# -- untrusted manifests -----------------------------------------------------------------------------------------
def _mutations(value, rng: random.Random):
    """One random structural change somewhere inside a JSON value."""
    junk = [None, True, -1, 0, 2**70, 1e308, float("nan"), "", "x" * 300, "../../etc/passwd", "/etc/hostname", [], {},
            [1, "a"], {"a": 1}]
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        action = rng.random()
        if action < 0.2:
            del value[key]
        elif action < 0.5:
            value[key] = rng.choice(junk)
        else:
            value[key] = _mutations(value[key], rng)
        return value
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        if rng.random() < 0.3:
            del value[i]
        else:
            value[i] = _mutations(value[i], rng)
        return value
    return rng.choice(junk)


def test_mutated_manifests_never_raise_anything_but_a_dbunet_error(tiny_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    original = json.loads((art / "manifest.json").read_text())
    rng = random.Random(1234)
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(300):
        m = json.loads(json.dumps(original))
        for _ in range(rng.randint(1, 3)):
            m = _mutations(m, rng)
        (art / "manifest.json").write_text(json.dumps(m))
        try:
            Manifest.read(art)
            outcomes["loaded"] += 1
        except DbunetError:
            outcomes["refused"] += 1
    for blob in (b"", b"\xff\xfe", b"[" * 100000, os.urandom(4096), b'{"format_version": 1}'):
        (art / "manifest.json").write_bytes(blob)
        with pytest.raises(DbunetError):
            Manifest.read(art)
    assert outcomes["refused"] > 100  # the mutations do reach the checks


def test_a_graph_whose_external_data_points_elsewhere_is_refused_before_loading(tiny_artifacts, tmp_path, monkeypatch):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(1 << 16))
    graph = art / "fp32" / "gae.onnx"
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="gae.onnx.data", size_threshold=1024)
    assert external_data_locations(graph.read_bytes()) == {"gae.onnx.data"}  # the walker agrees with onnx
    hostile = onnx.load(str(graph), load_external_data=False)
    for t in hostile.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../../secret.bin"
    graph.write_bytes(hostile.SerializeToString())
    assert external_data_locations(graph.read_bytes()) == {"../../secret.bin"}
    m = json.loads((art / "manifest.json").read_text())
    entry = next(a for a in m["artifacts"] if a["component"] == "gae" and a["precision"] == "fp32")
    entry["files"] = ["fp32/gae.onnx"]
    entry["sha256"] = {"fp32/gae.onnx": sha256_file(graph)}  # hashes that match: only the location betrays it
    (art / "manifest.json").write_text(json.dumps(m))
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: pytest.fail("a session was created"))
    with pytest.raises(ArtifactError, match=r"reads external data from '\.\./\.\./secret\.bin'"):
        Pipeline.from_artifacts(art, "ort", "fp32")


# -- interrupted and concurrent exports -------------------------------------------------------------------------
EXPORTED = ("text_encoder", "gae")
EXPORT = [sys.executable, "-m", "dbunet.cli.export", "--components", *EXPORTED, "--fp16"]


def _export_killed_at(out: Path, marker: str) -> None:
    """Run an export and SIGKILL it as soon as a progress line contains every word of `marker`."""
    proc = subprocess.Popen([*EXPORT, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if all(word in line.split() for word in marker.split()):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"the export ended before {marker!r}"


@pytest.mark.parametrize("marker", ["M parameters", "[1/2] text_encoder", "[2/2] gae", "gae fp16"])
def test_kill_9_during_an_export_keeps_the_previous_artifacts(tiny_artifacts, tmp_path, marker):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifacts, out)
    before = (out / "manifest.json").read_bytes()
    _export_killed_at(out, marker)
    components = {a.component for a in Manifest.read(out).artifacts}
    if marker == "gae fp16":  # the last graph: the kill races the switch, so old or new are both right
        assert (out / "manifest.json").read_bytes() == before or components == set(EXPORTED)
    else:
        assert (out / "manifest.json").read_bytes() == before  # still the old one
    image = Pipeline.from_artifacts(out, "ort", "fp32")("a red cat", **REQUEST).image
    assert image.shape == (64, 64, 3)
    assert list(tmp_path.glob(".art.partial-*")) or marker == "gae fp16"  # what the killed export left ...
    from dbunet.export.exporter import ExportOptions, export

    export(ExportOptions(out=out, components=EXPORTED, fp16=True), report=lambda line: None)
    assert not list(tmp_path.glob(".art.partial-*"))  # ... is cleared by the next export (EXPORT's, in-process)
    assert not (tmp_path / ".art.lock").exists()  # the killed export's lock too: taken, then removed
    assert {a.component for a in Manifest.read(out).artifacts} == set(EXPORTED)


def test_a_first_export_killed_leaves_no_directory_at_all(tmp_path):
    _export_killed_at(tmp_path / "art", "[2/2] gae")
    assert not (tmp_path / "art").exists()


def test_a_second_concurrent_export_fails_at_once(tmp_path):
    from dbunet.export.exporter import ExportOptions, export

    with open(tmp_path / ".art.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running export holds it
        with pytest.raises(ExportError, match="another dbunet-export is writing"):
            export(ExportOptions(out=tmp_path / "art", components=("gae",)))
    assert not (tmp_path / "art").exists()


def test_the_export_lock_is_removed_while_it_is_still_held(tmp_path, monkeypatch):
    """Removed after its release, a waiting export could lock the file just before it goes, and hold a lock
    nobody else sees while a third export creates a new file and locks that."""
    from dbunet.export import staging

    seen, real_unlink = [], Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name == ".art.lock":
            with open(self, "a+") as other:  # another export trying it at that moment
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    seen.append("free")
                except BlockingIOError:
                    seen.append("held")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with staging.staged(tmp_path / "art") as stage:
        (stage / "manifest.json").write_text("{}")
    assert seen == ["held"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_an_export_that_locks_a_removed_lock_file_takes_the_new_one(tmp_path, monkeypatch):
    """Export B opened the lock file, then its holder finished and removed it, then B locked it: B holds a file
    no one else can open. Meanwhile export C created a new lock file and holds it, so B must fail, not write."""
    from dbunet.export import staging

    out, path = tmp_path / "art", tmp_path / ".art.lock"
    path.touch()
    opened_before = open(path, "a+")  # noqa: SIM115 (B's handle, from before the removal)
    path.unlink()  # the holder's release
    with staging.staged(out):  # C
        opens = []

        def b_opens(file, *args, **kwargs):  # B's first open is the one it made before the removal
            opens.append(file)
            return opened_before if len(opens) == 1 else open(file, *args, **kwargs)

        monkeypatch.setattr(staging, "open", b_opens, raising=False)
        with pytest.raises(ExportError, match="another dbunet-export is writing"), staging.staged(out):
            pass
        monkeypatch.undo()
    assert opens == [path, path] and opened_before.closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


CONTENDER = """
import os, sys
from pathlib import Path
from dbunet.errors import ExportError
from dbunet.export import staging
out, inside, held = Path(sys.argv[1]), Path(sys.argv[1] + ".inside"), 0
for _ in range(int(sys.argv[2])):
    try:
        with staging._export_lock(out):
            os.close(os.open(inside, os.O_CREAT | os.O_EXCL))  # FileExistsError: two holders at once
            os.unlink(inside)
            held += 1
    except ExportError:
        pass
print(held)
"""


def test_exports_contending_for_the_lock_never_hold_it_together(tmp_path):
    """Four processes take and release the lock as fast as they can (each release removes the file). Without
    the check that a locked file is still the one at the path, two of them hold it at once within a few
    hundred rounds here."""
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path / "art"), "800"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in results]
    assert sum(int(out) for out, _ in results) > 0
    assert list(tmp_path.iterdir()) == []


def test_switch_without_an_atomic_exchange_recovers_the_previous_export(tmp_path, monkeypatch):
    """Where renameat2 is missing the switch takes two renames; an export killed between them leaves the
    previous artifacts as .NAME.previous, which the runtime names and the next export restores."""
    from dbunet.export import staging

    out, stage = tmp_path / "art", tmp_path / ".art.partial-1"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    stage.mkdir()
    (stage / "manifest.json").write_text("new")
    monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    calls = []
    real_rename = Path.rename

    def rename_then_die(self, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between the two renames
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        staging.switch(stage, out)
    monkeypatch.setattr(Path, "rename", real_rename)
    with pytest.raises(ArtifactError, match=r"previous artifacts are in .*\.art\.previous"):
        Manifest.read(out)
    with staging.staged(out) as new_stage:  # the next export restores it first
        assert (out / "manifest.json").read_text() == "old"
        (new_stage / "manifest.json").write_text("newer")
    assert (out / "manifest.json").read_text() == "newer" and not (tmp_path / ".art.previous").exists()


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    from dbunet.export.staging import _exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not _exchange(a, b):
        pytest.skip("this kernel or filesystem has no RENAME_EXCHANGE; the two-rename path is tested above")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_a_prompt_beyond_the_text_window_is_truncated_with_one_warning(tiny_artifacts, caplog):
    """Accepted rather than refused (as SD 1.x pipelines do): the encoder reads its first 77 tokens."""
    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32")
    long = "a red cat " + "on a sofa " * 40
    with caplog.at_level("WARNING", logger="dbunet.runtime.tokenizer"):
        image = pipe(long, seed=1, **REQUEST).image
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "77 tokens" in warnings[0].getMessage()
    cut = pipe.stages.tokenize([long])[0]
    assert cut.shape == (77,)
    np.testing.assert_array_equal(image, pipe(long[:len(long) - 5], seed=1, **REQUEST).image)  # the tail is not read


def test_what_was_verified_is_what_is_loaded_when_an_export_switches_the_directory(tiny_artifacts, tmp_path,
                                                                                  monkeypatch):
    """An export's switch between a run's checks and its loads: the run keeps the export it verified (the
    directory is pinned), never graphs of one export loaded under the other's checks."""
    import hashlib
    import json

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from dbunet import manifest
    from dbunet.runtime import Pipeline

    art, other = tmp_path / "art", tmp_path / "other"
    shutil.copytree(tiny_artifacts, art)
    shutil.copytree(tiny_artifacts, other)
    # the other export: a different decoder (its weights scaled), hash updated: a valid export of its own
    m = json.loads((other / "manifest.json").read_text())
    a = next(a for a in m["artifacts"] if a["component"] == "vae_decoder" and a["precision"] == "fp32")
    model = onnx.load(str(other / a["files"][0]))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 4:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0.5, init.name))
    onnx.save(model, str(other / a["files"][0]))
    a["sha256"][a["files"][0]] = hashlib.sha256((other / a["files"][0]).read_bytes()).hexdigest()
    (other / "manifest.json").write_text(json.dumps(m))

    request = dict(steps=3, height=64, width=64, refiner_steps=0, seed=5)
    want = Pipeline.from_artifacts(art, "ort", "fp32")("a red cat", **request).image
    assert not np.array_equal(want, Pipeline.from_artifacts(other, "ort", "fp32")("a red cat", **request).image)

    verify, seen = manifest.verify_artifact, []

    def verify_then_switch(directory, artifact):
        path = verify(directory, artifact)
        seen.append(artifact.component)
        if len(seen) == 6:  # every graph checked: now the export's switch happens
            art.rename(tmp_path / "old")
            other.rename(art)
        return path

    monkeypatch.setattr(manifest, "verify_artifact", verify_then_switch)
    got = Pipeline.from_artifacts(art, "ort", "fp32")("a red cat", **request).image
    assert len(seen) == 6 and np.array_equal(got, want)


def _run_cli(*argv: str, cwd=None, fsize: int | None = None) -> subprocess.CompletedProcess:
    """A dbunet command in its own process; `fsize` caps the size of any file it writes (RLIMIT_FSIZE: a real
    'File too large' from the kernel, as a full disk gives its own error mid-write)."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=600, cwd=cwd,
                          preexec_fn=limit if fsize else None)


def test_an_output_the_disk_refuses_is_one_line_with_the_path_and_nothing_left(tiny_artifacts, tmp_path):
    out = tmp_path / "out.png"
    proc = _run_cli("dbunet.cli.run", "--artifacts", str(tiny_artifacts), "--prompt", "a cat", "--backend", "ort",
                    "--steps", "2", "--output", str(out), "--quiet", fsize=1000)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(out) in lines[0] and "too large" in lines[0].lower()
    assert list(tmp_path.iterdir()) == []  # neither the image nor its temporary file


def test_an_export_the_disk_refuses_keeps_the_previous_artifacts(tiny_artifacts, tmp_path, snapshot):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    before = snapshot(art)
    proc = _run_cli("dbunet.cli.export", "--config", "tiny", "--out", str(art), "--components", "gae", fsize=50_000)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(art) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no half export beside it, and no lock file


@pytest.mark.parametrize("out, cwd", [(".", "art"), ("..", "art/fp32"), ("art", "art")])
def test_an_export_over_the_current_directory_is_refused(tiny_artifacts, tmp_path, snapshot, out, cwd):
    """The switch replaces the directory itself: a shell standing in it was left in a deleted directory, where
    `ls` showed nothing and the next `dbunet-run --artifacts .` found no manifest."""
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    before = snapshot(art)
    proc = _run_cli("dbunet.cli.export", "--config", "tiny", "--out", out if out != "art" else str(art),
                    "--components", "gae", cwd=tmp_path / cwd)
    assert proc.returncode == 2 and "is or holds the current directory" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(art) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # refused before the lock is taken


def test_an_export_beside_or_below_the_current_directory_is_not_refused(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    from dbunet.export import staging

    staging.check_target(tmp_path / "art")
    staging.check_target(tmp_path / "here" / "art")  # below the current directory: its own directory is replaced


def test_an_output_of_another_user_in_a_sticky_folder_is_refused_up_front(tiny_artifacts, tmp_path, monkeypatch,
                                                                          capsys):
    from dbunet.cli import run as run_cli

    sticky = tmp_path / "shared"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "out.png").write_bytes(b"someone else's")
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(sticky / "out.png").st_uid + 1)  # we are not its owner
    assert run_cli.main(["--artifacts", str(tiny_artifacts), "--prompt", "a cat", "--output",
                         str(sticky / "out.png"), "--quiet"]) == 2
    assert "belongs to another user in a sticky folder" in capsys.readouterr().err
    assert (sticky / "out.png").read_bytes() == b"someone else's"


def test_api_box_and_option_types(tiny_artifacts):
    from dbunet.boxes import Box
    from dbunet.errors import InputError
    from dbunet.runtime import Pipeline

    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32")
    req = pipe.request("a cat", boxes=None)
    assert req.boxes == ()
    one = Box.parse("0.1,0.1,0.5,0.5:a cat")
    parsed = pipe.request("a cat", boxes="0.1,0.1,0.5,0.5:a cat").boxes
    assert pipe.request("a cat", boxes=one).boxes == (one,) == parsed
    for bad, says in ((lambda: dict(boxes=[Box(0.1, 0.1, 0.5, 0.5, 5)]), "phrase must be a string"),
                      (lambda: dict(boxes=[(0.1, 0.1, 0.5, 0.5)]), "a box must be a Box"),
                      (lambda: dict(boxes=7), "boxes must be"), (lambda: dict(guidance_scale="7"), "guidance scale"),
                      (lambda: dict(steps=2.5), "steps must be"),
                      (lambda: dict(scheduler=["ddim"]), r"unknown scheduler \['ddim'\]"),  # a TypeError before
                      (lambda: dict(boxes=[Box(True, 0.1, 0.5, 0.5, "cat")]), "box True,0.1,0.5,0.5:cat: .*finite")):
        with pytest.raises(InputError, match=says):  # the Box itself, or the request, refuses: one clear error
            pipe.request("a cat", **bad())


def test_none_is_the_model_s_default_as_diffusers_optional_arguments_are(tiny_artifacts):
    """Code written for diffusers passes None for what it leaves to the pipeline (negative_prompt=None,
    height=None); a JSON null is "not given" over HTTP. Before, the Python API refused each ("prompt and negative
    prompt must be strings", "height must be an integer, got None"). An option the model lacks, given as None,
    asks nothing of it."""
    import dataclasses

    from dbunet.request import GenerationRequest
    from dbunet.runtime import Pipeline

    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32")
    nones = {f.name: None for f in dataclasses.fields(GenerationRequest) if f.name != "prompt"}
    assert pipe.request("a cat", **nones) == pipe.request("a cat")


def test_numpy_scalars_are_the_numbers_they_hold_and_a_numpy_bool_is_still_a_bool(tiny_artifacts):
    from dbunet.boxes import Box
    from dbunet.errors import InputError
    from dbunet.runtime import Pipeline

    pipe = Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32")
    box = Box(np.float32(0.25), np.float32(0.25), np.float32(0.75), np.float32(0.75), np.str_("a cat"))
    req = pipe.request("a cat", boxes=[box], seed=np.int64(7), steps=np.int32(3), height=np.int64(64),
                       guidance_scale=np.float32(4.0), refiner_steps=np.uint8(1), box_fraction=np.float16(0.5))
    plain = pipe.request("a cat", boxes=["0.25,0.25,0.75,0.75:a cat"], seed=7, steps=3, height=64,
                         guidance_scale=4.0, refiner_steps=1, box_fraction=0.5)
    assert req == plain and type(req.seed) is int and type(req.boxes[0].x0) is float
    for bad, says in ((dict(seed=np.bool_(True)), "seed must be"), (dict(steps=np.float64(2.5)), "steps must be"),
                      (dict(height=np.int64(60)), "height must be")):
        with pytest.raises(InputError, match=says):
            pipe.request("a cat", **bad)
    with pytest.raises(InputError, match="finite"):
        Box(np.float32("nan"), 0.1, 0.5, 0.5, "cat")


def test_threads_past_twice_the_cores_need_insisting(tiny_artifacts, monkeypatch):
    from dbunet.errors import ConfigError
    from dbunet.runtime import Pipeline

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match="more than twice this machine's 2 cores"):
        Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32", threads=5)
    monkeypatch.setenv("DBUNET_FORCE_THREADS", "1")
    assert Pipeline.from_artifacts(tiny_artifacts, "ort", "fp32", threads=5)


@pytest.mark.parametrize("threads, says", [(0, "an integer >= 1, got 0"), ("2", "an integer >= 1, got '2'"),
                                           (5, "more than twice this machine's 2 cores")])
def test_the_reference_takes_the_thread_rule_of_the_graph_runtimes(tiny_artifacts, monkeypatch, threads, says):
    # before, torch.set_num_threads raised its own RuntimeError, and 5 threads on 2 cores went through
    from dbunet.backends import open_pipeline
    from dbunet.errors import ConfigError

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match=says):
        open_pipeline(tiny_artifacts, "torch", threads=threads)


def test_an_output_name_near_the_limit_is_written(tiny_artifacts, tmp_path):
    """A 250-byte name fits the file system; the temporary file beside it must fit too."""
    out = tmp_path / ("n" * 246 + ".png")
    proc = _run_cli("dbunet.cli.run", "--artifacts", str(tiny_artifacts), "--prompt", "a cat", "--backend", "ort",
                    "--steps", "2", "--refiner-steps", "0", "--output", str(out), "--quiet")
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-1000:]


def test_an_engines_index_nested_past_the_parser_is_malformed_not_a_crash(tmp_path):
    from dbunet.engines.cache import read_index
    from dbunet.errors import ArtifactError

    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="malformed"):
        read_index(tmp_path)


def test_an_engines_index_listing_one_engine_twice_is_malformed(tmp_path):
    # before: the first of the two was used, whichever it was (as with a manifest listing an artifact twice)
    from dbunet.engines.cache import Device, EngineEntry, read_index, write_index
    from dbunet.errors import ArtifactError

    (tmp_path / "engines").mkdir()
    device = Device("10.9.0", "NVIDIA H200", 90)
    entries = [EngineEntry("vae_decoder", "64x64", key * 64, f"engines/vae_decoder.64x64.{key}.plan", "0" * 64, device,
                           "local functions") for key in "ab"]
    write_index(tmp_path, entries[:1])
    assert read_index(tmp_path) == entries[:1]
    write_index(tmp_path, entries)
    with pytest.raises(ArtifactError, match=r"malformed \(the vae_decoder engine at 64x64 for TensorRT 10.9.0 on "
                                            r"NVIDIA H200 \(sm_90\) is listed twice\)"):
        read_index(tmp_path)


def test_sigterm_during_an_export_leaves_nothing_half_written(tiny_artifacts, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifacts, out)
    before = (out / "manifest.json").read_bytes()
    proc = subprocess.Popen([*EXPORT, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "[2/2] gae" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in rest, rest
    assert (out / "manifest.json").read_bytes() == before
    assert not list(tmp_path.glob(".art.partial-*")) and not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / ".art.lock").exists()


def test_atomic_writes_read_the_umask_without_changing_it(tmp_path, monkeypatch):
    """Reading the umask by setting it races other threads (their files take the temporary 0 mask)."""
    from dbunet import atomic

    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    old = real(0o027)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        assert oct((tmp_path / "f.txt").stat().st_mode & 0o777) == oct(0o666 & ~0o027)
    finally:
        real(old)
    assert calls == []  # never set, so never wrong for a thread writing meanwhile


def test_two_spellings_of_one_export_directory_share_its_lock(tmp_path):
    """A symlink to the target is the same directory: its export waits on the same lock (fails at once here)."""
    from dbunet.export.exporter import ExportOptions, export

    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with open(tmp_path / ".real.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an export of tmp_path/real is running
        with pytest.raises(ExportError, match="another dbunet-export is writing"):
            export(ExportOptions(out=tmp_path / "alias", components=("gae",)))
    assert not list(tmp_path.glob(".*partial*"))
