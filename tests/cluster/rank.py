"""One rank of a pretend data-parallel run, for the cluster tests.

``python rank.py ENDPOINT RUN_ID RANK WORLD_SIZE [--nan-at STEP] [--step-every N]``

It loops every 20 ms, one message per iteration (gradient norms, LSTM state, PPO numbers, as a
trainer's update would send them), until SIGUSR1 asks it to end the run: then it closes its emitter, which
sends ``run_end`` (status ok), and exits 0. The faults the tests drive:

- ``--nan-at STEP``: the total gradient norm of that one step is NaN (a diverging rank);
- ``--step-every N``: the step advances only every N iterations (a straggler that still talks);
- SIGSTOP from outside: the trainer is stopped mid-run, as a hung one is; nothing more is sent.
"""

from __future__ import annotations

import argparse
import signal
import threading

from simic.producer import Emitter

HEADS = ["policy", "value"]
PERIOD_S = 0.02


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("run_id")
    parser.add_argument("rank", type=int)
    parser.add_argument("world_size", type=int)
    parser.add_argument("--nan-at", type=int, default=None)
    parser.add_argument("--step-every", type=int, default=1)
    args = parser.parse_args()

    end = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: end.set())
    with Emitter(args.endpoint, run_id=args.run_id, rank=args.rank, world_size=args.world_size, heads=HEADS) as emitter:
        iteration = 0
        while not end.wait(PERIOD_S):
            step = iteration // args.step_every
            total = float("nan") if step == args.nan_at and iteration % args.step_every == 0 else 1.0
            emitter.emit("head_grad_norms", step=step, norms={"policy": 0.8, "value": 0.6}, total=total)
            emitter.emit("lstm_health", step=step, h_rms=0.3, c_rms=0.5)
            emitter.emit("ppo_update", step=step, approx_kl=0.01, entropy={"policy": 1.2})
            emitter.flush()
            iteration += 1


if __name__ == "__main__":
    main()
