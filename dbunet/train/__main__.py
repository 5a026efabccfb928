"""python -m dbunet.train PRESET --out DIR [--resume]: train a demo preset on generated data."""

from __future__ import annotations

import argparse
import sys
import time

from dbunet.cli.common import Parser, guarded, path_arg
from dbunet.errors import ConfigError, InputError
from dbunet.releases import require_models
from dbunet.request import SEED_RANGE, valid_seed

DESCRIPTION = """Train every component of a demo preset on the shapes generator, in stages: the VAE, then the
text encoder and DB-UNet (diffusion loss with guidance and box dropout), then the DiffuseGAE refiner.
Seeded and resumable: DIR/checkpoint/ is written every few hundred steps; DIR/loss.csv logs every step;
the trained model lands in DIR/model/ (a dbunet model folder: dbunet-export --weights DIR/model) and the
loss curves in DIR/losses.png."""


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m dbunet.train", description=DESCRIPTION)
    p.add_argument("preset", choices=["shapes"], help="the preset to train (shapes: the generator's dataset)")
    p.add_argument("--out", type=path_arg, required=True, help="run directory (checkpoints, loss log, trained model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available; default)")
    p.add_argument("--smoke", action="store_true", help="a few steps per stage: checks the machinery, trains nothing")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the batches and the noise (default: 0)")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not valid_seed(args.seed):
        raise InputError(f"--seed must be an integer in {SEED_RANGE}, got {args.seed}")
    require_models(ConfigError, "training")
    import torch

    from dbunet.config import preset
    from dbunet.models.device import torch_device
    from dbunet.train.trainer import CHECKPOINT, LOSS_PLOT, RUN_ENTRIES, Trainer, TrainPlan

    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a directory for the run")
    checkpoint = args.out / CHECKPOINT / "progress.json"
    if checkpoint.is_file() and not args.resume:
        raise InputError(f"{args.out} holds a run already; pass --resume to continue it, or choose another --out")
    if args.resume and not checkpoint.is_file():
        raise InputError(f"nothing to resume in {args.out} (no checkpoint/progress.json)")
    others = sorted(p.name for p in args.out.iterdir() if p.name not in RUN_ENTRIES) if args.out.is_dir() else []
    if others:  # a run killed before its first checkpoint holds only its own entries, and starts again
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise InputError(f"--out {args.out} holds {listed}, which no run wrote; give a new or empty directory")
    plan = TrainPlan.chosen(args.smoke, args.seed)
    device = torch_device(args.device)  # before anything is written into --out

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    start = time.perf_counter()
    trainer = Trainer(preset(args.preset), args.out, plan, device, report)  # refuses a resume under another plan
    report(f"training {args.preset} on {device} ({torch.get_num_threads()} threads) into {args.out}")
    model_dir = trainer.run()
    minutes = (time.perf_counter() - start) / 60
    curves = args.out / LOSS_PLOT
    print(f"trained model in {model_dir} ({minutes:.1f} min this run)"
          + (f"; loss curves in {curves}" if curves.is_file() else ""))  # none drawn without matplotlib
    return 0


if __name__ == "__main__":
    sys.exit(main())
