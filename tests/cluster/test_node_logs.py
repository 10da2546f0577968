"""Logs of several nodes, afterwards: ``simic-consumer replay node-*/logs`` and ``report node-*/logs``.

Two real sidecars record one run of four ranks, two per node; node 1 is slow, so its two ranks
are in step with each other but fall behind node 0's. Neither sidecar can see that. The logs of
both nodes replayed together can, and they give back every alert the live sidecars raised.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from simic.producer import Emitter

from tests.consumer.sinks.test_metrics import scrape, value

from .conftest import WAIT_S, until

RUN = "multi"
ITERATIONS = 200
SLOW = 4  # node 1 makes one step every SLOW iterations: 150 steps behind at the end (rank_divergence: > 100)
IN_STEP = 20  # every IN_STEP iterations, wait until both sidecars have every rank's newest step
NAN = (1, 10)  # rank 1 (node 0) sends a NaN total norm at step 10


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A command line as a user types it, globs included, with this interpreter's simic-consumer."""
    line = command.replace("simic-consumer", f"{sys.executable} -m simic.consumer", 1)
    result = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def key(alert: dict) -> tuple:
    return alert["rule"], alert["severity"], alert["cleared"], alert["run_id"], alert["rank"], alert["step"]


def step_of(rank: int, iteration: int) -> int:
    return iteration if rank < 2 else iteration // SLOW


def record_two_nodes(tmp_path: Path, socket_dir: Path, daemons) -> None:
    """Four ranks, two per node, sending as fast as they can. A sidecar reads its ranks' connections
    in turns of its own choosing, so the ranks of a node are kept within IN_STEP steps of each other
    on arrival by waiting, now and then, for the sidecar to have them all (its metrics say)."""
    nodes = [daemons(f"ipc://{socket_dir}/node-{i}.ipc", tmp_path / f"node-{i}" / "logs", "--metrics-port", "0") for i in range(2)]
    urls = [node.wait_for("serving metrics on").rsplit(" ", 1)[1].strip() for node in nodes]
    emitters = {rank: Emitter(nodes[rank // 2].endpoint, run_id=RUN, rank=rank, world_size=4, heads=["policy", "value"]) for rank in range(4)}
    for i in range(ITERATIONS):
        for rank, emitter in emitters.items():
            step = step_of(rank, i)
            total = float("nan") if (rank, step) == NAN else 1.0
            emitter.emit("head_grad_norms", step=step, norms={"policy": 0.8, "value": 0.6}, total=total)
            emitter.flush()
        if i % IN_STEP == IN_STEP - 1:
            until(f"every rank's step of iteration {i} at its sidecar", lambda: all(
                value(scrape(urls[rank // 2]), "simic_last_step", run_id=RUN, rank=str(rank)) == step_of(rank, i) for rank in emitters))
    for rank, emitter in emitters.items():
        emitter.close()
        nodes[rank // 2].wait_for(f"run {RUN} rank {rank} session")  # "... ended (ok)": all of it was received
    for node in nodes:
        assert node.stop() == 0


class TestLogsOfSeveralNodes:
    def test_replay_and_report_take_every_node_and_see_across_them(self, tmp_path, socket_dir, daemons):
        """``replay node-*/logs`` merges both nodes: all four ranks, every live alert, and the
        straggling node that no single sidecar saw; ``report node-*/logs`` draws the same run."""
        record_two_nodes(tmp_path, socket_dir, daemons)
        live = [json.loads(line) for i in range(2) for line in (tmp_path / f"node-{i}" / "logs" / "alerts.jsonl").read_text().splitlines()]

        lines = [json.loads(line) for line in shell("simic-consumer replay node-*/logs --json", tmp_path).stdout.splitlines()]
        replayed = [line for line in lines if line["type"] == "alert"]
        summary = lines[-1]
        sessions = summary["runs"][RUN]
        assert [s["rank"] for s in sessions] == [0, 1, 2, 3]
        assert all(s["status"] == "ok" and s["lost"] == 0 for s in sessions)
        assert [s["last_step"] for s in sessions] == [step_of(rank, ITERATIONS - 1) for rank in range(4)]

        # The NaN was seen live on node 0 and again in the replay.
        assert ("non_finite", "critical", False, RUN, 1, 10) in {key(a) for a in live}
        # Only the merged logs show node 1's ranks behind node 0's.
        assert not [a for a in live if a["rule"] == "rank_divergence"]
        lagging = [a for a in replayed if a["rule"] == "rank_divergence" and not a["cleared"]]
        assert lagging and {a["rank"] for a in lagging} <= {2, 3} and lagging[0]["values"]["lag"] > 100
        # Everything else is what the sidecars raised live, alert for alert.
        assert sorted(key(a) for a in replayed if a["rule"] != "rank_divergence") == sorted(key(a) for a in live)

        written = shell("simic-consumer report node-*/logs -o report.html", tmp_path).stdout
        counts = re.search(r"(\d+) runs, (\d+) events, (\d+) alerts", written)
        assert counts is not None, written
        assert [int(n) for n in counts.groups()] == [1, summary["events"], len(replayed)]
        assert (tmp_path / "report.html").stat().st_size > 0
