"""A process that has imported torch, megatron-core and elama once and forks training ranks on
request, so each of the fault lane's many short runs skips ~5-10 s of imports per rank (and its
checkpointing Manager, spawned with this light module as __mp_main__, skips them too).

Protocol, one JSON object per line on stdin/stdout:
  {"start": {"argv": [...], "env": {...}, "log": path, "pgid": 0 | N}} -> {"pid": pid}
  {"wait": pid} -> {"status": exit code, or -signal}
A rank is forked into process group `pgid` (0: a new one led by itself), with its output in `log`;
ELAMA_KILL_AT in its env arms tests.faults.kill_at in that rank only.
"""
from __future__ import annotations

import json
import os
import sys

if __name__ == "__mp_main__":  # a rank's spawned child: die with the rank
    from elama.lifetime import maybe_die_with_spawning_parent

    maybe_die_with_spawning_parent()


def _preload() -> None:
    import torch

    torch.set_num_threads(1)  # before any parallel op: no thread pool is forked
    import elama.data.blend  # noqa: F401  (what elama.train imports inside main)
    import elama.parallel.setup  # noqa: F401
    import elama.resume  # noqa: F401
    import elama.train  # noqa: F401
    import elama.trainer  # noqa: F401
    import megatron.core.dist_checkpointing.strategies.async_utils  # noqa: F401


def _rank(argv: list[str], env: dict, log: str, pgid: int) -> None:
    """In the forked child: become the rank, run elama.train, exit with its code."""
    code = 1
    try:
        try:  # the parent does it too: whichever runs first (the group must exist for the next)
            os.setpgid(0, pgid)
        except PermissionError:
            pass
        from elama.lifetime import die_with_parent

        die_with_parent(os.getppid())
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hung rank's stacks, on ask
        os.environ.update(env)
        if env.get("ELAMA_KILL_AT"):
            from tests.faults import kill_at

            kill_at.arm()
        import elama.train

        code = elama.train.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    _preload()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            r = request["start"]
            pid = os.fork()
            if pid == 0:
                sys.stdin.close()
                _rank(r["argv"], r["env"], r["log"], r["pgid"])
            try:  # before replying: a rank asked for next may join this group at once
                os.setpgid(pid, r["pgid"] or pid)
            except (PermissionError, ProcessLookupError):
                pass
            reply = {"pid": pid}
        else:
            _, status = os.waitpid(request["wait"], 0)
            reply = {"status": os.waitstatus_to_exitcode(status)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
