"""TrainState and the loop: train_step, maybe_log, maybe_eval, maybe_save.

The loop reads like the algorithm; building the pieces (process groups, model, optimizer, data,
resume) happens once in Trainer.__init__, in the order megatron needs: weights before the
optimizer (which copies them into fp32 master weights), optimizer state after.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from elama import checkpoint
from elama.config import ConfigError, ElamaConfig, to_dict
from elama.data.loader import build_train_data, build_valid_data
from elama.metrics import MetricsLogger, peak_tflops
from elama.model.llama import flops_per_token
from elama.optim import apply_lr, build_optimizer, lr_at, optimizer_step
from elama.parallel import parallelize_llama, patches, setup
from elama.parallel.dims import ParallelDims
from elama.preemption import PreemptionWatch
from elama.step import forward_step

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient norm with train.nonfinite=stop."""


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps completed (updates applied or skipped)."""
    consumed_samples: int = 0
    """Sequences drawn from the data so far (the data position to resume from)."""
    consumed_tokens: int = 0
    """Tokens trained on so far."""
    skipped_steps: int = 0
    """Steps whose update was skipped for a non-finite loss or gradient norm."""


@dataclass
class StepResult:
    loss: float
    """Mean token loss over the global batch (the same value on every rank)."""
    grad_norm: float
    """Global gradient norm before clipping."""
    num_tokens: int
    """Tokens in the loss over the global batch."""
    stepped: bool
    """False when the update was skipped (non-finite loss or gradient norm)."""


def train_step(model: list, optimizer, data_iterators: list, *, num_microbatches: int,
               seq_len_tokens: int, micro_batch_size: int, clip_grad: float) -> StepResult:
    """Forward and backward over all microbatches (megatron's pipeline schedule), gradient
    reduction (finalize_model_grads, inside the schedule), then clip and step."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = _run_schedule(model, data_iterators, num_microbatches, seq_len_tokens,
                            micro_batch_size, forward_only=False)
    loss, num_tokens = reduce_loss(reports)
    if not math.isfinite(loss):
        return StepResult(loss, float("nan"), num_tokens, stepped=False)
    stepped, grad_norm = optimizer_step(optimizer, clip_grad)
    return StepResult(loss, grad_norm, num_tokens, stepped)


def _run_schedule(model, data_iterators, num_microbatches, seq_len_tokens, micro_batch_size,
                  *, forward_only: bool) -> list:
    schedule = setup.forward_backward_func()
    return schedule(
        forward_step_func=forward_step,
        data_iterator=data_iterators if len(data_iterators) > 1 else data_iterators[0],
        model=model, num_microbatches=num_microbatches, seq_length=seq_len_tokens,
        micro_batch_size=micro_batch_size, forward_only=forward_only)


def reduce_loss(reports: list) -> tuple[float, int]:
    """Mean loss over the global batch on every rank: the last pipeline stage sums its
    microbatches and data-parallel replicas, then broadcasts over the pipeline group.
    (A CPU-GPU sync point: the loss is needed on the host for logging and the skip decision.)"""
    totals = torch.zeros(2, dtype=torch.float64, device=setup.comm_device())
    if setup.is_last_stage():
        for report in reports:
            totals += report["lm loss"].detach().to(totals.device, torch.float64)
        dist.all_reduce(totals, group=setup.dp_group())
    dist.broadcast(totals, src=setup.last_stage_rank(), group=setup.pp_group())
    loss_sum, tokens = totals.tolist()
    return (loss_sum / tokens if tokens else float("nan")), int(tokens)


def _check_relayout(cfg: ElamaConfig) -> None:
    """Before any process group: a checkpoint whose optimizer state cannot take this layout."""
    resume_dir = checkpoint.find_resume(cfg.checkpoint.run_dir)
    problem = resume_dir and checkpoint.relayout_problem(checkpoint.read_meta(resume_dir),
                                                         cfg.parallel, resume_dir)
    if problem:
        raise ConfigError([problem])


class Trainer:
    def __init__(self, cfg: ElamaConfig, world_size: int):
        self.cfg, self.run_dir = cfg, Path(cfg.checkpoint.run_dir)
        self.dims = ParallelDims.from_config(cfg.parallel, world_size)
        _check_relayout(cfg)
        setup.init_distributed(self.dims, device=cfg.device, seed=cfg.seed,
                               timeout_s=cfg.parallel.timeout_s)
        self.model, self.tc = parallelize_llama(cfg, self.dims)
        self.state = TrainState()
        self.saved_data_plan = None  # the resumed checkpoint's, which the data keeps
        resume_dir = checkpoint.find_resume(self.run_dir)
        if resume_dir is not None:
            checkpoint.load_model(self.model, resume_dir / "model")
        elif cfg.checkpoint.init_from:
            source = checkpoint.resolve(cfg.checkpoint.init_from)
            if cfg.lora.rank > 0:  # the base weights; the new adapters keep their init
                from elama.model.lora import load_base_weights

                load_base_weights(self.model, source / "model")
            else:
                checkpoint.load_model(self.model, source / "model")
            logger.info("initialised weights from %s (fresh optimizer and schedule)", source)
        self.optimizer = build_optimizer(cfg, self.model)
        self.tc.grad_scale_func = self.optimizer.scale_loss
        if resume_dir is not None:
            self._restore(resume_dir)
        self.microbatches = self.dims.num_microbatches(cfg.train.global_batch_size,
                                                       cfg.train.micro_batch_size)
        self.train_iters, self.data_plan = build_train_data(cfg, self.dims, self.state.consumed_samples,
                                                            self.saved_data_plan)
        self.valid_sets = build_valid_data(cfg, self.dims)
        self.metrics = MetricsLogger(
            str(self.run_dir), enabled=dist.get_rank() == 0, world_size=world_size,
            flops_per_token=flops_per_token(cfg.model, cfg.data.seq_len_tokens),
            peak_tflops_per_device=peak_tflops(cfg.logging.peak_tflops_per_device, cfg.device),
            tensorboard=cfg.logging.tensorboard, jsonl=cfg.logging.jsonl, device=cfg.device,
            train_steps=cfg.train.train_steps, logging_cfg=cfg.logging, run_config=to_dict(cfg))
        self.preemption = PreemptionWatch(setup.comm_device())
        self.saver = checkpoint.Saver(optimizer_format=cfg.checkpoint.optimizer_format,
                                      async_save=cfg.checkpoint.async_save)
        self.saved_step = self.state.step if resume_dir is not None else None

    def _restore(self, resume_dir: Path) -> None:
        meta = checkpoint.read_meta(resume_dir)
        fmt = meta.get("optimizer_format", checkpoint.LEGACY_OPTIMIZER_FORMAT)
        applied = patches.prepare_optimizer_load(self.optimizer, fmt, self.cfg.device)
        checkpoint.load_optimizer(self.optimizer, self.model, resume_dir / "optimizer", fmt)
        patches.finish_optimizer_load(self.optimizer, applied)
        self.state = TrainState(**meta["train_state"])
        self.saved_data_plan = meta.get("data")
        checkpoint.load_rng(resume_dir / "rng", self.dims.describe(), meta.get("layout"))
        logger.info("resumed from %s at step %d (%d samples consumed)", resume_dir,
                    self.state.step, self.state.consumed_samples)

    def train(self) -> str:
        """Run to train.train_steps: "done"; "preempted" after saving on a signal; "exited" after
        saving at train.exit_interval."""
        cfg, state = self.cfg, self.state
        while state.step < cfg.train.train_steps:
            lr = lr_at(state.step, cfg.optim, cfg.train.train_steps)
            apply_lr(self.optimizer, lr, cfg.optim.weight_decay)
            result = train_step(self.model, self.optimizer, self.train_iters,
                                num_microbatches=self.microbatches,
                                seq_len_tokens=cfg.data.seq_len_tokens,
                                micro_batch_size=cfg.train.micro_batch_size,
                                clip_grad=cfg.optim.clip_grad)
            self._advance(result)
            self.saver.maybe_commit()  # a collective while an async save is in flight
            self.maybe_log(result, lr)
            self.maybe_eval()
            if self.preemption.requested():
                self.save()
                self.saver.wait()
                return "preempted"
            self.maybe_save()
            if cfg.train.exit_interval and state.step % cfg.train.exit_interval == 0:
                if self.saved_step != state.step:
                    self.save()
                self.saver.wait()
                return "exited"
        if self.saved_step != state.step:
            self.save()
        self.saver.wait()  # the tracker names the last checkpoint before the run reports done
        return "done"

    def _advance(self, result: StepResult) -> None:
        state = self.state
        state.step += 1
        state.consumed_samples += self.cfg.train.global_batch_size
        state.consumed_tokens += result.num_tokens
        self.metrics.step_done(result.num_tokens)
        if result.stepped:
            return
        state.skipped_steps += 1
        message = (f"step {state.step}: non-finite loss {result.loss} or gradient norm "
                   f"{result.grad_norm}; update skipped ({state.skipped_steps} so far)")
        if self.cfg.train.nonfinite == "stop":
            raise NonFiniteError(message.replace("update skipped", "stopping (train.nonfinite=stop)"))
        logger.warning(message)

    def maybe_log(self, result: StepResult, lr: float) -> None:
        if self.state.step % self.cfg.train.log_interval and self.state.step != self.cfg.train.train_steps:
            return
        self.metrics.log(self.state.step, {
            "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
            "consumed_tokens": self.state.consumed_tokens, "skipped_steps": self.state.skipped_steps})

    def maybe_eval(self) -> None:
        interval = self.cfg.train.eval_interval
        if interval and self.state.step % interval == 0:
            self.metrics.write(self.state.step, {"step": self.state.step, **self.evaluate()})

    def evaluate(self) -> dict:
        """Mean loss on each validation blend over the same eval_steps global batches each time."""
        results = {}
        for chunk in self.model:
            chunk.eval()
        with torch.no_grad():
            for name, make_iters in self.valid_sets.items():
                iters, total, tokens = make_iters(), 0.0, 0
                for _ in range(self.cfg.train.eval_steps):
                    reports = _run_schedule(self.model, iters, self.microbatches,
                                            self.cfg.data.seq_len_tokens,
                                            self.cfg.train.micro_batch_size, forward_only=True)
                    loss, n = reduce_loss(reports)
                    total, tokens = total + loss * n, tokens + n
                results[f"valid_{name}_loss"] = total / max(tokens, 1)
        for chunk in self.model:
            chunk.train()
        return results

    def maybe_save(self) -> None:
        interval = self.cfg.checkpoint.save_interval
        if interval and self.state.step % interval == 0:
            self.save()

    def save(self) -> None:
        config = to_dict(self.cfg)
        meta = {"kind": "train", "step": self.state.step,
                "train_state": dataclasses.asdict(self.state), "config": config,
                "model": config["model"], "layout": self.dims.describe(),
                "mode": self.cfg.train.mode, "lora": config["lora"],
                "base": self.cfg.checkpoint.init_from,
                "data": self.data_plan, "versions": checkpoint.versions()}
        self.saver.save(self.run_dir, self.state.step, model=self.model, optimizer=self.optimizer,
                        meta=meta, layout=self.dims.describe(),
                        keep_last=self.cfg.checkpoint.keep_last)
        self.saved_step = self.state.step
        logger.info("saving step %d (%s)", self.state.step,
                    "in the background" if self.cfg.checkpoint.async_save else "committed")

    def close(self) -> None:
        self.saver.close()
        self.metrics.close()
        self.preemption.close()
        setup.destroy_distributed()
