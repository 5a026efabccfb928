"""Training machinery on a few steps (CI never trains for real): outputs, resume, refusals."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dbunet.config import shapes
from dbunet.errors import InputError
from dbunet.models.cascade import load_model
from dbunet.train.__main__ import main
from dbunet.train.trainer import StagePlan, Trainer, TrainPlan

PLAN = TrainPlan(vae=StagePlan(4, 2, 1e-4, 1), unet=StagePlan(4, 2, 1e-4, 1), refiner=StagePlan(4, 2, 1e-4, 1),
                 pool=8, checkpoint_every=2)


class Crash(Exception):
    pass


def test_smoke_run_writes_a_loadable_model_a_loss_log_and_curves(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["shapes", "--out", str(out), "--smoke", "--device", "cpu"]) == 0
    model = load_model(out / "model")
    assert model.config.name == "shapes"
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "stage,step,loss,parts,seconds" and len(rows) == 1 + 3 * 3
    assert {r.split(",")[0] for r in rows[1:]} == {"vae", "unet", "refiner"}
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trained model in" in capsys.readouterr().out
    # a second run into the same folder must say --resume rather than train over it
    assert main(["shapes", "--out", str(out), "--smoke"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["shapes", "--out", str(tmp_path / "empty"), "--resume"]) == 2


def test_without_matplotlib_a_run_ends_with_its_model_and_says_how_to_get_the_curves(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as where neither the bench nor the dev extra is installed
    out = tmp_path / "run"
    assert main(["shapes", "--out", str(out), "--smoke", "--device", "cpu"]) == 0
    assert (out / "model" / "model.safetensors").is_file() and not (out / "losses.png").exists()
    said = capsys.readouterr()
    assert 'losses.png skipped: matplotlib is not installed (pip install -e ".[bench]")' in said.err
    assert "trained model in" in said.out and "losses.png" not in said.out  # before: "loss curves in .../losses.png"


def test_without_torch_training_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as where the export extra is not installed
    assert main(["shapes", "--out", str(tmp_path / "run"), "--smoke"]) == 2
    said = capsys.readouterr().err
    assert said == 'error: training needs torch, which is not installed; pip install -e ".[export]"\n'
    assert not (tmp_path / "run").exists()


def test_an_unreachable_device_or_a_file_as_out_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """Simulated: no reachable GPU (PyTorch would fail at the first tensor, after the run folder was begun)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, says in (("cuda", "device 'cuda': this PyTorch"), ("gpu", "on cpu or cuda here, not 'gpu'")):
        assert main(["shapes", "--out", str(tmp_path / device), "--smoke", "--device", device]) == 2
        assert says in capsys.readouterr().err
        assert not (tmp_path / device).exists()
    (tmp_path / "a-file").write_text("notes")
    assert main(["shapes", "--out", str(tmp_path / "a-file"), "--smoke", "--device", "cpu"]) == 2
    assert "is a file; give a directory" in capsys.readouterr().err
    for seed in ("-1", str(2**63)):  # numpy's and PyTorch's tracebacks before, after the run folder was begun
        assert main(["shapes", "--out", str(tmp_path / "seeded"), "--smoke", f"--seed={seed}"]) == 2
        assert capsys.readouterr().err == f"error: --seed must be an integer in 0..2^63-1, got {seed}\n"
        assert not (tmp_path / "seeded").exists()
    with pytest.raises(SystemExit) as exc:  # argparse's error: an empty --out was the current directory
        main(["shapes", "--out", "", "--smoke"])
    assert exc.value.code == 2 and "argument --out: expected a path, got an empty string" in capsys.readouterr().err


def test_a_new_run_is_not_started_among_the_users_files_but_one_killed_early_starts_again(tmp_path, capsys):
    # before: a run went into any existing directory (a diffusers folder, say), beside what was there
    folder = tmp_path / "sd-folder"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    before = sorted(p.name for p in folder.iterdir())
    assert main(["shapes", "--out", str(folder), "--smoke", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: --out {folder} holds model_index.json, unet, which no run wrote; "
                                       "give a new or empty directory\n")
    assert sorted(p.name for p in folder.iterdir()) == before
    killed = tmp_path / "killed"  # what a run leaves when killed before its first checkpoint
    (killed / "checkpoint" / "tokenizer").mkdir(parents=True)
    (killed / "loss.csv").write_text("stage,step,loss,parts,seconds\n")
    assert main(["shapes", "--out", str(killed), "--smoke", "--device", "cpu"]) == 0


def _weights(directory):
    return load_file(str(directory / "model" / "model.safetensors"))


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    Trainer(shapes(), whole, PLAN, torch.device("cpu"), lambda line: None).run()

    broken = tmp_path / "broken"
    original = Trainer._log

    def crash_at_unet_step_3(self, stage, step, losses, seconds):
        if (stage, step) == ("unet", 3):
            raise Crash
        original(self, stage, step, losses, seconds)

    monkeypatch.setattr(Trainer, "_log", crash_at_unet_step_3)
    with pytest.raises(Crash):
        Trainer(shapes(), broken, PLAN, torch.device("cpu"), lambda line: None).run()
    progress = json.loads((broken / "checkpoint" / "progress.json").read_text())
    assert (progress["stage"], progress["step"]) == ("unet", 2)  # the last checkpoint before the crash
    assert not (broken / "model").exists()  # no half-trained model published
    monkeypatch.setattr(Trainer, "_log", original)
    lines = []
    Trainer(shapes(), broken, PLAN, torch.device("cpu"), lines.append).run()
    assert any("resuming at step 2/4" in line for line in lines)

    a, b = _weights(whole), _weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    def config(run):
        return json.loads((run / "model" / "config.json").read_text())

    assert config(whole) == config(broken)


def test_a_run_resumed_with_other_options_is_refused_before_anything_changes(tmp_path, capsys):
    # before: --resume --seed 5 continued a seed-0 run with seed-5 batches, and --resume without --smoke turned a
    # smoke run into a full one from its smoke weights: either way, weights no plan would have made
    run = tmp_path / "run"
    assert main(["shapes", "--out", str(run), "--smoke", "--device", "cpu"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for other in (["--smoke", "--seed", "5"], []):
        assert main(["shapes", "--out", str(run), "--resume", "--device", "cpu", *other]) == 2
        said = capsys.readouterr().err
        assert said == f"error: the run in {run} began with --seed 0 --smoke; resume it with the same\n"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    progress = run / "checkpoint" / "progress.json"  # a plan no options choose (an earlier dbunet's, say)
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "plan": PLAN.as_saved()}))
    with pytest.raises(InputError, match="began with another training plan"):
        Trainer(shapes(), run, TrainPlan.chosen(True, 0), torch.device("cpu"), lambda line: None)
    assert main(["shapes", "--out", str(run), "--resume", "--smoke", "--device", "cpu"]) == 2


def _damage_progress(**fields):
    def damage(run):
        progress = run / "checkpoint" / "progress.json"
        progress.write_text(json.dumps({**json.loads(progress.read_text()), **fields}))
    return damage


def _remove(name):
    return lambda run: (run / "checkpoint" / name).unlink()


def _copy(source, target):
    return lambda run: (run / "checkpoint" / target).write_bytes((run / "checkpoint" / source).read_bytes())


def _both(*damages):
    return lambda run: [d(run) for d in damages]


# a run folder is the user's: copied half, edited by hand, or from an earlier dbunet; before, each of these
# was a traceback (JSONDecodeError, AttributeError, KeyError), or, with the weights gone, a resume from fresh
# random weights at the saved step
DAMAGED_CHECKPOINTS = [
    ("not JSON", lambda run: (run / "checkpoint" / "progress.json").write_text("{oops"), "not valid JSON"),
    ("not an object", lambda run: (run / "checkpoint" / "progress.json").write_text("[1]"),
     "top level: [1] is not of type 'object'"),
    ("no config", lambda run: (run / "checkpoint" / "progress.json").write_text('{"stage": "vae", "step": 1}'),
     "'config' is a required property"),
    ("config of nothing", _damage_progress(config={}), "config: config top level: 'name' is a required property"),
    ("unknown stage", _damage_progress(stage="gan"), "unknown stage 'gan'; the stages are vae, unet, refiner"),
    ("step past the stage", _damage_progress(stage="vae", step=7), "step 7 is past the vae stage's 3 steps"),
    ("negative step", _damage_progress(step=-1), "step: -1 is less than the minimum of 0"),
    ("weights gone", _remove("weights.safetensors"), "weights.safetensors is missing"),
    ("optimizer gone mid-stage", _both(_damage_progress(stage="unet", step=2), _remove("optimizer.safetensors")),
     "optimizer.safetensors is missing"),
    ("average gone mid-stage", _both(_damage_progress(stage="refiner", step=2), _remove("ema.safetensors")),
     "ema.safetensors is missing"),
    ("weights of another model", lambda run: (run / "checkpoint" / "weights.safetensors").write_bytes(
        (run / "checkpoint" / "optimizer.safetensors").read_bytes()), "weights.safetensors does not fit the model"),
    # before: a wrong optimizer file was read as no state at all (Adam restarted: not the uninterrupted run's
    # weights), a wrong average failed with a KeyError at the stage's first step
    ("optimizer of another model", _both(_damage_progress(stage="refiner", step=2), _copy("weights.safetensors",
                                                                                          "optimizer.safetensors")),
     "optimizer.safetensors does not fit the model: refiner.gae.decoder.0.bias unknown and"),
    ("average of another model", _both(_damage_progress(stage="refiner", step=2), _copy("optimizer.safetensors",
                                                                                        "ema.safetensors")),
     "ema.safetensors does not fit the model: "),
]


def test_a_damaged_checkpoint_is_one_line_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["shapes", "--out", str(run), "--smoke", "--device", "cpu"]) == 0
    pristine = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    progress = run / "checkpoint" / "progress.json"
    for name, damage, says in DAMAGED_CHECKPOINTS:
        for path, data in pristine.items():
            (run / path).parent.mkdir(parents=True, exist_ok=True)
            (run / path).write_bytes(data)
        damage(run)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        capsys.readouterr()
        assert main(["shapes", "--out", str(run), "--resume", "--smoke", "--device", "cpu"]) == 2, name
        lines = capsys.readouterr().err.splitlines()  # a file read once the stage starts follows its progress line
        assert [line for line in lines if line.startswith("error:")] == lines[-1:], (name, lines)
        assert lines[-1].startswith(f"error: {progress} is damaged (") and says in lines[-1], (name, lines)
        assert lines[-1].endswith("the run cannot resume from it: start it again in another --out"), (name, lines)
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before, name


def test_a_run_killed_before_its_first_progress_starts_from_fresh_weights(tmp_path):
    # the first checkpoint writes the weights, then progress.json; killed between the two, the next run starts over,
    # and before it did so from those half-trained weights: a model no seed makes
    fresh = tmp_path / "fresh"
    Trainer(shapes(), fresh, PLAN, torch.device("cpu"), lambda line: None).run()
    killed = tmp_path / "killed"
    Trainer(shapes(), killed, PLAN, torch.device("cpu"), lambda line: None).run()
    shutil.rmtree(killed / "model")
    (killed / "checkpoint" / "progress.json").unlink()  # the trained weights.safetensors stays
    (killed / "loss.csv").unlink()
    Trainer(shapes(), killed, PLAN, torch.device("cpu"), lambda line: None).run()
    a, b = _weights(fresh), _weights(killed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
