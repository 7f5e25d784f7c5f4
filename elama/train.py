"""Entry point: python -m elama.train <hydra overrides>, as one plain process, under torchrun or srun.

`python -m elama.train --check <overrides>` validates everything a start would (config, data
manifests, resume compatibility, a writable run directory) and exits, starting no process group:
launch/train.sbatch runs it before srun starts any rank. `--help` lists every config field,
`--cfg job` prints the composed config.

Exit codes: 0 done (or checked), 1 failed, 2 invalid config (nothing started), 3 non-finite loss
with train.nonfinite=stop, 75 preempted after saving (launch/train.sbatch requeues). Rank 0's last
line and <run_dir>/outcome.json say the same, for launchers that replace the code (torchrun: 1).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from elama.config import ConfigError, load_config, validate
from elama.config.help import handle_config_flags
from elama.logs import launcher_rank, setup_logging
from elama.lifetime import apply_to_children, exit_process, maybe_die_with_spawning_parent
from elama.outcome import EXIT_FAILED, Outcome, write_outcome

EXIT_CONFIG, EXIT_NONFINITE = 2, 3
if __name__ == "__mp_main__":  # a rank's spawned child (checkpointing's Manager): dies with it
    maybe_die_with_spawning_parent()
USAGE = """usage: python -m elama.train [--check] OVERRIDE ...            (one process, no launcher)
       torchrun --nproc-per-node N -m elama.train OVERRIDE ...   (N processes on this machine)
       python -m elama.train --cfg job OVERRIDE ...              (print the composed config)

OVERRIDE is Hydra's: GROUP=OPTION (experiment=cpt_tiny_cpu, data=synthetic) or
section.field=value (parallel.tp=2 train.train_steps=100); a key that is not one of the fields
below is refused, with or without Hydra's `+`. --check validates config, data, resume and the run
directory and exits. Exit codes: 0 done, 1 failed, 2 invalid config, 3 non-finite loss
(train.nonfinite=stop), 75 preempted after saving; <run_dir>/outcome.json records the outcome."""

logger = logging.getLogger("elama.train")


def check_run_dir(cfg, world_size: int = 0) -> list[str]:
    """The run directory must be creatable and writable (checkpoints, metrics, data cache)."""
    path = Path(cfg.checkpoint.run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return [f"checkpoint.run_dir={path} is not writable ({e.strerror}): choose another "
                "directory or fix its permissions"]
    return []


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    answered = handle_config_flags(args, USAGE, "elama.train")
    if answered is not None:
        return answered
    setup_logging()
    apply_to_children()  # a rank killed with kill -9 takes its forked children along
    from elama.data.blend import check_data
    from elama.parallel.setup import apply_launcher_env
    from elama.resume import check_resume

    check_only = "--check" in args
    world_size = apply_launcher_env()
    try:
        cfg = load_config([a for a in args if a != "--check"])
        # Every problem (config, data manifests, resume compatibility) before any process group.
        validate(cfg, world_size, extra_checks=[check_data, check_resume, check_run_dir])
    except ConfigError as e:
        if launcher_rank() == 0:  # every rank finds the same problems: report them once
            logger.error("%s", e)
        return EXIT_CONFIG
    if check_only:
        logger.info("config valid for %d processes; run directory %s", world_size,
                    cfg.checkpoint.run_dir)
        return 0
    return run(cfg, world_size)


def run(cfg, world_size: int) -> int:
    """Train, then state the outcome: rank 0's last line and <run_dir>/outcome.json."""
    import torch.distributed as dist

    from elama.checkpoint import iter_name
    from elama.preemption import REQUEUE_EXIT_CODE
    from elama.trainer import NonFiniteError, Trainer

    trainer, kind, error, code = None, "failed", None, EXIT_FAILED
    rank = launcher_rank()
    try:
        trainer = Trainer(cfg, world_size)
        rank = dist.get_rank()
        kind = trainer.train()
        code = REQUEUE_EXIT_CODE if kind == "preempted" else 0
    except NonFiniteError as e:
        kind, error, code = "nonfinite", str(e), EXIT_NONFINITE
    except ConfigError as e:  # found only once the run's pieces exist (e.g. on resume)
        kind, error, code = "invalid", str(e).replace("\n", " "), EXIT_CONFIG
    except Exception as e:
        logger.exception("training failed")  # the traceback first: the outcome is the last line
        error = f"{e.__class__.__name__}: {e}".splitlines()[0]
    finally:
        if trainer is not None:
            trainer.close()
    step = trainer.state.step if trainer is not None else None
    saved = getattr(trainer, "saved_step", None)
    outcome = Outcome(kind, step, code, iter_name(saved) if saved is not None else None, error)
    if rank == 0:
        try:
            write_outcome(cfg.checkpoint.run_dir, outcome, world_size)
        except OSError as e:
            logger.error("could not write the outcome into %s: %s", cfg.checkpoint.run_dir, e)
    (logger.info if code in (0, REQUEUE_EXIT_CODE) else logger.error)("%s", outcome.line())
    return code


if __name__ == "__main__":  # the guard matters: checkpoint saving starts a spawn-context Manager
    exit_process(main())
