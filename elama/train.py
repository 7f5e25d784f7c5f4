"""Entry point: python -m elama.train <hydra overrides>, under torchrun or srun.

Exit codes: 0 done, 2 invalid config (nothing started), 3 non-finite loss with
train.nonfinite=stop, 75 preempted after saving (launch/train.sbatch requeues).
"""
from __future__ import annotations

import logging
import os
import sys

from elama.config import ConfigError, load_config, validate

EXIT_CONFIG, EXIT_NONFINITE = 2, 3


def setup_logging() -> None:
    """Rank 0 logs INFO, the others WARNING (one metrics line per step, not one per rank)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s rank{rank} %(name)s] %(message)s", datefmt="%H:%M:%S")
    # megatron-core logs every parameter name and config field at INFO: keep its warnings only.
    logging.getLogger("megatron").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    from elama.data.blend import check_data
    from elama.preemption import REQUEUE_EXIT_CODE
    from elama.resume import check_resume
    from elama.trainer import NonFiniteError, Trainer

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
        # Every problem (config, data manifests, resume compatibility) before any process group.
        validate(cfg, world_size, extra_checks=[check_data, check_resume])
    except ConfigError as e:
        logging.getLogger("elama.train").error("%s", e)
        return EXIT_CONFIG
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
