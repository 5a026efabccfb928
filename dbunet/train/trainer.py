"""Staged training of a preset on the shapes generator, resumable from its last checkpoint.

Stages, in order (each trains only its own parts; the others are frozen):
  vae      AutoencoderKL reconstruction (L1 + MSE + a small KL term), then the latent scaling
           factor is measured (1 / std of the latents) and written into the config
  unet     text encoder + DB-UNet on the noise-prediction loss over VAE latents, with
           classifier-free-guidance dropout (empty prompt, no boxes) and box dropout (prompt kept)
  refiner  semantic encoder + GAE + conditional UNet as a diffusion autoencoder in pixel space
           (noise levels up to the strengths the refiner runs at), and the GAE reconstructing z_sem

Every batch, noise draw and dropout mask derives from (seed, stage, step), so a resumed run draws
exactly what an uninterrupted one would. The output folder holds checkpoint/ (weights, optimizer,
EMA, progress), loss.csv, and at the end model/ (a dbunet model folder) and losses.png.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dbunet import atomic, jsonfile, schemas
from dbunet.config import ModelConfig
from dbunet.errors import ConfigError, InputError, WeightsError
from dbunet.models.cascade import TOKENIZER_DIR, Model, build_model, save_model
from dbunet.models.components import tokenize
from dbunet.models.files import read_safetensors
from dbunet.releases import install
from dbunet.request import valid_seed
from dbunet.tokenizer import learn_bpe, write_clip_tokenizer
from dbunet.train.data import VOCABULARY, Layout, ShapesDataset

STAGES = ("vae", "unet", "refiner")
AVERAGED = ("unet", "refiner")  # stages whose weights ship as their exponential moving average
# what a run writes into its directory: anything else there is the user's, and a new run is not started among it
CHECKPOINT, LOSS_LOG, LOSS_PLOT = "checkpoint", "loss.csv", "losses.png"
MODEL, PARTIAL_MODEL = "model", ".model.partial"
RUN_ENTRIES = (CHECKPOINT, LOSS_LOG, MODEL, PARTIAL_MODEL, LOSS_PLOT)
Report = Callable[[str], None]


@dataclass(frozen=True)
class StagePlan:
    steps: int
    batch: int
    lr: float
    warmup: int = 100


@dataclass(frozen=True)
class TrainPlan:
    vae: StagePlan = StagePlan(steps=2000, batch=16, lr=1e-3)
    unet: StagePlan = StagePlan(steps=9000, batch=32, lr=5e-4, warmup=200)
    refiner: StagePlan = StagePlan(steps=6000, batch=16, lr=5e-4)  # 1500 left visible grain (x0 error ~8/255 at t=100)
    pool: int = 30000  # layouts encoded once for the UNet stage
    cfg_dropout: float = 0.1  # empty prompt and no boxes: the unconditional half of guidance
    box_dropout: float = 0.15  # no boxes, prompt kept: what the runtime runs once the box schedule ends
    refiner_max_t: int = 400  # the refiner runs from strength 0.3 (t ~ 300) down; train a margin above
    ema: float = 0.999
    checkpoint_every: int = 250
    seed: int = 0

    @classmethod
    def smoke(cls) -> TrainPlan:
        """A few steps of every stage: checks the machinery, trains nothing (CI)."""
        tiny = StagePlan(steps=3, batch=4, lr=1e-4, warmup=1)
        return cls(vae=tiny, unet=tiny, refiner=tiny, pool=16, checkpoint_every=2)

    @classmethod
    def chosen(cls, smoke: bool, seed: int) -> TrainPlan:
        """The plan python -m dbunet.train's --smoke and --seed pick."""
        return dataclasses.replace(cls.smoke() if smoke else cls(), seed=seed)

    def stage(self, name: str) -> StagePlan:
        return getattr(self, name)

    def as_saved(self) -> dict:
        """As progress.json holds it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Progress:
    """Where the last checkpoint stands (progress.json, checked): `step` steps of `stage` done."""

    stage: str
    step: int
    config: ModelConfig  # the run's, with the VAE scaling measured after the VAE stage


def _damaged(progress: Path, why: str) -> InputError:
    return InputError(f"{progress} is damaged ({why}); the run cannot resume from it: start it again in another --out")


def _options_of(began: dict) -> str:
    """How a saved plan reads as python -m dbunet.train's options, for the line that refuses a resume under another."""
    seed = began.get("seed")
    flags = next((f"--seed {seed}" + (" --smoke" if smoke else "") for smoke in (False, True)
                  if valid_seed(seed) and TrainPlan.chosen(smoke, seed).as_saved() == began), None)
    if flags is None:
        return "another training plan (an earlier dbunet); this one cannot resume it"
    return f"{flags}; resume it with the same"


def lr_at(plan: StagePlan, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < plan.warmup:
        return plan.lr * (step + 1) / plan.warmup
    progress = (step - plan.warmup) / max(1, plan.steps - plan.warmup)
    return plan.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def shapes_tokenizer(directory: Path, vocab_size: int) -> Path:
    """A CLIP BPE learned from the generator's words: every prompt word is one token."""
    vocab, merges = learn_bpe(vocab_size, VOCABULARY * 4)
    return write_clip_tokenizer(directory, vocab, merges)


class EMA:
    """Exponential moving average of a module's floating-point parameters (what ships)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1 - decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict({**module.state_dict(), **self.shadow})


class Trainer:
    def __init__(self, config: ModelConfig, out: Path, plan: TrainPlan, device: torch.device, report: Report) -> None:
        self.out, self.plan, self.device, self.report = out, plan, device, report
        self.ckpt = out / CHECKPOINT
        self.progress = self._read_progress()
        if self.progress:
            config = self.progress.config  # carries the measured VAE scaling
        else:
            shapes_tokenizer(self.ckpt / TOKENIZER_DIR, config.text.vocab_size)
        self.config = config
        self.model: Model = build_model(config, self.ckpt / TOKENIZER_DIR, seed=plan.seed)
        self.cascade = self.model.cascade.to(device)
        if self.progress:
            self._load_weights(self.ckpt / "weights.safetensors")
        self.data = ShapesDataset(config.defaults.height, seed=plan.seed)

    # -- bookkeeping ------------------------------------------------------------------------
    def _read_progress(self) -> Progress | None:
        """progress.json, None before the first checkpoint. Read as untrusted input (a run folder may be half
        copied, edited, or an earlier dbunet's), and checked with what a resume needs, before anything changes."""
        path = self.ckpt / "progress.json"
        if not path.is_file():
            return None

        def damaged(why: str) -> InputError:
            return _damaged(path, why)

        progress = jsonfile.loads(path.read_bytes(), damaged)
        wrong = schemas.problem(progress, schemas.TRAIN_PROGRESS)
        if wrong:
            raise damaged(wrong)
        began = progress.get("plan")
        if began is not None and began != self.plan.as_saved():  # its weights so far: another run's to continue
            raise InputError(f"the run in {self.out} began with {_options_of(began)}")
        stage, step = progress["stage"], progress["step"]
        if stage not in STAGES:
            raise damaged(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
        total = self.plan.stage(stage).steps
        if step > total:
            raise damaged(f"step {step} is past the {stage} stage's {total} steps")
        try:
            config = ModelConfig.from_dict(progress["config"])
        except ConfigError as exc:
            raise damaged(f"config: {exc}") from None
        mid_stage = 0 < step < total  # _loop continues from the optimizer's state and the average
        needed = ["weights.safetensors"] + (["optimizer.safetensors"] if mid_stage else []) + (
            ["ema.safetensors"] if mid_stage and stage in AVERAGED else [])
        missing = [name for name in needed if not (self.ckpt / name).is_file()]
        if missing:
            raise damaged(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
        return Progress(stage, step, config)

    def _load_weights(self, path: Path) -> None:
        self.cascade.load_state_dict(self._checkpoint(path.name, _shapes(self.cascade.state_dict())))

    def _checkpoint(self, name: str, expected: dict[str, torch.Size], every: bool = True) -> dict[str, torch.Tensor]:
        """A checkpoint file's tensors, refused as damaged unless they fit `expected` (name -> shape): none unknown,
        none of another shape, and, where `every`, none missing."""
        try:
            found = read_safetensors(self.ckpt / name, str(self.device))
        except WeightsError as exc:  # truncated, or not safetensors
            raise _damaged(self.ckpt / "progress.json", str(exc)) from None
        unfit = ([f"{k} missing" for k in expected if every and k not in found]
                 + [f"{k} unknown" for k in found if k not in expected]
                 + [f"{k} of shape {list(found[k].shape)}, not {list(shape)}" for k, shape in expected.items()
                    if k in found and found[k].shape != shape])
        if unfit or not found:
            more = f" and {len(unfit) - 1} more" if len(unfit) > 1 else ""
            why = f"{unfit[0]}{more}" if unfit else "it holds nothing"
            raise _damaged(self.ckpt / "progress.json", f"{name} does not fit the model: {why}")
        return found

    def _save(self, stage: str, step: int, optimizer: torch.optim.Optimizer | None, ema: EMA | None) -> None:
        """Weights, optimizer and EMA first, progress.json last: progress never points past what is saved."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.cascade.state_dict().items()}
        atomic.write_with(self.ckpt / "weights.safetensors", lambda p: save_file(state, str(p)))
        if optimizer is not None:
            atomic.write_with(self.ckpt / "optimizer.safetensors",
                              lambda p: save_file(_optimizer_tensors(optimizer), str(p)))
        if ema is not None:
            shadow = {k: v.cpu().contiguous() for k, v in ema.shadow.items()}
            atomic.write_with(self.ckpt / "ema.safetensors", lambda p: save_file(shadow, str(p)))
        progress = {"stage": stage, "step": step, "config": self.config.to_dict(),
                    "plan": self.plan.as_saved()}
        atomic.write_text(self.ckpt / "progress.json", json.dumps(progress, indent=1))

    def _log(self, stage: str, step: int, losses: dict[str, float], seconds: float) -> None:
        path = self.out / LOSS_LOG
        new = not path.is_file()
        with path.open("a", newline="", encoding="utf-8") as f:  # append-only log; a resumed run continues it
            w = csv.writer(f)
            if new:
                w.writerow(["stage", "step", "loss", "parts", "seconds"])
            w.writerow([stage, step, f"{losses['loss']:.6f}",
                        " ".join(f"{k}={v:.5f}" for k, v in losses.items() if k != "loss"), f"{seconds:.3f}"])

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Path:
        done_stage = self.progress.stage if self.progress else None
        done_step = self.progress.step if self.progress else 0
        for name in STAGES:
            if done_stage is not None and STAGES.index(name) < STAGES.index(done_stage):
                continue
            start = done_step if name == done_stage else 0
            if start >= self.plan.stage(name).steps and name == done_stage:
                continue
            getattr(self, f"train_{name}")(start)
        return self.finish()

    def finish(self) -> Path:
        model_dir = self.out / MODEL
        partial = self.out / PARTIAL_MODEL
        shutil.rmtree(partial, ignore_errors=True)
        save_model(Model(self.config, self.cascade.cpu().eval(), self.model.tokenizer, self.model.tokenizer_files),
                   partial)
        shutil.rmtree(model_dir, ignore_errors=True)
        partial.rename(model_dir)
        try:
            from dbunet.train.plot import plot_losses

            plot_losses(self.out / LOSS_LOG, self.out / LOSS_PLOT)
        except ImportError:
            self.report(f"losses.png skipped: matplotlib is not installed ({install('bench')})")
        return model_dir

    def _loop(self, name: str, start: int, params: list[torch.nn.Parameter], modules: list[torch.nn.Module],
              step_fn: Callable[[int, torch.Generator], dict[str, torch.Tensor]],
              ema_module: torch.nn.Module | None = None
              ) -> None:
        plan = self.plan.stage(name)
        optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=0.0)
        ema = EMA(ema_module, self.plan.ema) if ema_module is not None else None
        if start > 0:  # a parameter without a gradient yet has no optimizer state
            state_shapes = {f"{i}.{k}": p.shape if k != "step" else torch.Size([])
                            for i, p in enumerate(params) for k in ("exp_avg", "exp_avg_sq", "step")}
            _load_optimizer(optimizer, self._checkpoint("optimizer.safetensors", state_shapes, every=False))
            if ema is not None:
                ema.shadow = self._checkpoint("ema.safetensors", _shapes(ema.shadow))
            self.report(f"[{name}] resuming at step {start}/{plan.steps}")
        for m in modules:
            m.train()
        t_start, last = time.perf_counter(), start
        for step in range(start, plan.steps):
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(hash_seed(self.plan.seed, name, step))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(plan, step)
            losses = step_fn(step, gen)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if ema is not None:
                ema.update(ema_module, step)
            values = {k: float(v.detach()) for k, v in losses.items()}
            self._log(name, step, values, time.perf_counter() - t0)
            done = step + 1
            if done % self.plan.checkpoint_every == 0 and done < plan.steps:
                self._save(name, done, optimizer, ema)
            if done % 50 == 0 or done == plan.steps:
                rate = (time.perf_counter() - t_start) / (done - last)
                self.report(f"[{name}] step {done}/{plan.steps}  loss {values['loss']:.4f}  "
                            f"{rate:.2f} s/step  eta {rate * (plan.steps - done) / 60:.1f} min")
        for m in modules:
            m.eval()
        if ema is not None:
            ema.copy_to(ema_module)  # the averaged weights are what later stages and the shipped model use
        self._save(name, plan.steps, None, None)  # a stage is complete only once this is on disk

    # -- stage 1: VAE -----------------------------------------------------------------------
    def train_vae(self, start: int) -> None:
        vae, plan = self.cascade.vae, self.plan.vae

        def step_fn(step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
            x = self._images(step, "vae", plan.batch)
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(self.device)
            rec = vae.decode(z).sample
            l1, l2 = (rec - x).abs().mean(), (rec - x).pow(2).mean()
            kl = posterior.kl().mean() / x[0].numel()
            return {"loss": l1 + l2 + 1e-4 * kl, "l1": l1, "kl": kl}

        self._loop("vae", start, list(vae.parameters()), [vae], step_fn)

    @torch.no_grad()
    def _measure_scaling(self) -> None:
        """scaling_factor = 1 / std of the latents, so the diffusion sees unit variance (as SD's 0.18215)."""
        x = torch.from_numpy(self.data.batch(range(10**7, 10**7 + 256))[1]).to(self.device)
        std = float(self.cascade.vae.encode(x).latent_dist.mean.std())
        vae_cfg = dataclasses.replace(self.config.vae, scaling_factor=round(1.0 / std, 5))
        self.config = dataclasses.replace(self.config, vae=vae_cfg)
        self.cascade.vae.register_to_config(scaling_factor=vae_cfg.scaling_factor)
        self.report(f"[vae] latent std {std:.4f}: scaling_factor {vae_cfg.scaling_factor}")

    # -- stage 2: text encoder + DB-UNet ----------------------------------------------------
    def train_unet(self, start: int) -> None:
        if start == 0:  # deterministic, so measuring again after a crash gives the same factor
            self._measure_scaling()
        plan, cfg = self.plan.unet, self.config
        pool = self._encode_pool()
        unet, text_encoder = self.cascade.unet, self.cascade.text_encoder
        alphas = torch.from_numpy(cfg.schedule.alphas_cumprod()).float().to(self.device)
        empty = torch.from_numpy(tokenize(self.model.tokenizer, [""], cfg.text.max_length)).to(self.device)
        both = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})

        def step_fn(step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
            idx = torch.randint(0, len(pool["mean"]), (plan.batch,), generator=gen)
            mean, std = pool["mean"][idx], pool["std"][idx]
            z0 = (mean + std * torch.randn(mean.shape, generator=gen)).to(self.device) * cfg.vae.scaling_factor
            ids, phrase_ids = pool["ids"][idx].to(self.device), pool["phrase_ids"][idx].to(self.device)
            boxes, valid = pool["boxes"][idx].to(self.device), pool["valid"][idx].clone().to(self.device)
            u = torch.rand(plan.batch, generator=gen).to(self.device)
            uncond = u < self.plan.cfg_dropout
            no_boxes = u < self.plan.cfg_dropout + self.plan.box_dropout
            ids = torch.where(uncond[:, None], empty, ids)
            valid = valid * (~no_boxes)[:, None].float()
            B, N, L = phrase_ids.shape
            hidden, pooled = _encode(text_encoder, torch.cat([ids, phrase_ids.reshape(B * N, L)]))
            text, phrases = hidden[:B], pooled[B:].reshape(B, N, -1)
            t = torch.randint(0, cfg.schedule.num_train_timesteps, (plan.batch,), generator=gen).to(self.device)
            noise = torch.randn(z0.shape, generator=gen).to(self.device)
            a = alphas[t].view(-1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            eps = unet(zt, t.float(), text, boxes, phrases, valid, torch.tensor(1.0, device=self.device))
            return {"loss": F.mse_loss(eps, noise)}

        self._loop("unet", start, list(both.parameters()), [unet, text_encoder], step_fn, ema_module=both)

    @torch.no_grad()
    def _encode_pool(self) -> dict[str, torch.Tensor]:
        """Latent posteriors (mean, std) and tokens of `pool` training layouts, computed once."""
        n, cfg = self.plan.pool, self.config
        self.report(f"[unet] encoding {n} training layouts with the VAE")
        means, stds, layouts = [], [], []
        vae = self.cascade.vae.eval()
        for lo in range(0, n, 256):
            batch_layouts, images = self.data.batch(range(lo, min(n, lo + 256)))
            posterior = vae.encode(torch.from_numpy(images).to(self.device)).latent_dist
            means.append(posterior.mean.cpu())
            stds.append(posterior.std.cpu())
            layouts += batch_layouts
        ids = torch.from_numpy(tokenize(self.model.tokenizer, [lay.prompt for lay in layouts], cfg.text.max_length))
        boxes, valid, phrase_ids = _layout_tensors(layouts, self.model.tokenizer, cfg.text.max_length)
        return {"mean": torch.cat(means), "std": torch.cat(stds), "ids": ids, "phrase_ids": phrase_ids,
                "boxes": boxes, "valid": valid}

    # -- stage 3: refiner -------------------------------------------------------------------
    def train_refiner(self, start: int) -> None:
        plan, refiner = self.plan.refiner, self.cascade.refiner
        alphas = torch.from_numpy(self.config.refiner.schedule.alphas_cumprod()).float().to(self.device)

        def step_fn(step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
            x0 = self._images(step, "refiner", plan.batch)
            z_sem = refiner.semantic_encoder(x0)
            z_dis = refiner.gae(z_sem)
            t = torch.randint(0, self.plan.refiner_max_t, (plan.batch,), generator=gen).to(self.device)
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            a = alphas[t].view(-1, 1, 1, 1)
            eps = refiner.unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), z_dis)
            diffusion = F.mse_loss(eps, noise)
            gae = F.mse_loss(z_dis, z_sem.detach())
            return {"loss": diffusion + gae, "diffusion": diffusion, "gae": gae}

        self._loop("refiner", start, list(refiner.parameters()), [refiner], step_fn, ema_module=refiner)

    def _images(self, step: int, stage: str, batch: int) -> torch.Tensor:
        """A fresh batch of generated images per (stage, step): index ranges never repeat."""
        offset = {"vae": 10**8, "refiner": 2 * 10**8}[stage]
        _, images = self.data.batch(range(offset + step * batch, offset + (step + 1) * batch))
        return torch.from_numpy(images).to(self.device)


def _encode(text_encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = text_encoder(input_ids=ids)
    return out.last_hidden_state, out.pooler_output


def _layout_tensors(layouts: list[Layout], tokenizer, max_length: int, slots: int = 3
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.zeros(len(layouts), slots, 4)
    valid = torch.zeros(len(layouts), slots)
    phrases = [""] * (len(layouts) * slots)
    for i, lay in enumerate(layouts):
        for j, shape in enumerate(lay.shapes):
            boxes[i, j] = torch.tensor(shape.box)
            valid[i, j] = 1.0
            phrases[i * slots + j] = shape.phrase
    ids = torch.from_numpy(tokenize(tokenizer, phrases, max_length)).reshape(len(layouts), slots, max_length)
    return boxes, valid, ids


def hash_seed(seed: int, stage: str, step: int) -> int:
    return int(np.random.SeedSequence([seed, STAGES.index(stage), step]).generate_state(1)[0])


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in tensors.items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors (safetensors holds tensors only; no pickle)."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for k, v in state.items():
            out[f"{index}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    return out


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = optimizer.state_dict()
    keys = list(range(sum(len(g["params"]) for g in sd["param_groups"])))
    state = {}
    for i in keys:
        entries = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        if entries:
            state[i] = entries
    sd["state"] = state
    optimizer.load_state_dict(sd)
