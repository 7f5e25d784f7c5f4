"""Entry point: python -m elama.train <hydra overrides>, under torchrun or srun.

`python -m elama.train --check <overrides>` validates everything a start would (config, data
manifests, resume compatibility, a writable run directory) and exits, starting no process group:
launch/train.sbatch runs it before srun starts any rank.

Exit codes: 0 done (or checked), 2 invalid config (nothing started), 3 non-finite loss with
train.nonfinite=stop, 75 preempted after saving (launch/train.sbatch requeues).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from elama.config import ConfigError, load_config, validate

EXIT_CONFIG, EXIT_NONFINITE = 2, 3


def setup_logging() -> None:
    """Rank 0 logs INFO, the others WARNING (one metrics line per step, not one per rank)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s rank{rank} %(name)s] %(message)s", datefmt="%H:%M:%S")
    # megatron-core logs every parameter name and config field at INFO: keep its warnings only.
    logging.getLogger("megatron").setLevel(logging.WARNING)


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
    setup_logging()
    from elama.data.blend import check_data
    from elama.preemption import REQUEUE_EXIT_CODE
    from elama.resume import check_resume
    from elama.trainer import NonFiniteError, Trainer

    from elama.parallel.setup import apply_launcher_env

    args = list(sys.argv[1:] if argv is None else argv)
    check_only = "--check" in args
    world_size = apply_launcher_env()
    try:
        cfg = load_config([a for a in args if a != "--check"])
        # Every problem (config, data manifests, resume compatibility) before any process group.
        validate(cfg, world_size, extra_checks=[check_data, check_resume, check_run_dir])
    except ConfigError as e:
        logging.getLogger("elama.train").error("%s", e)
        return EXIT_CONFIG
    if check_only:
        logging.getLogger("elama.train").info("config valid for %d processes; run directory %s",
                                              world_size, cfg.checkpoint.run_dir)
        return 0
    trainer = Trainer(cfg, world_size)
    try:
        outcome = trainer.train()
    except NonFiniteError as e:
        logging.getLogger("elama.train").error("%s", e)
        return EXIT_NONFINITE
    finally:
        trainer.close()
    return REQUEUE_EXIT_CODE if outcome == "preempted" else 0


if __name__ == "__main__":  # the guard matters: checkpoint saving starts a spawn-context Manager
    sys.exit(main())
