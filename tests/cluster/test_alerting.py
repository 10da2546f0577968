"""Two nodes of one run, watched the documented way: a sidecar per node, Prometheus, Alertmanager.

Real processes on loopback: two ``simic-consumer run`` sidecars (node 0 on 127.0.0.1, node 1 on
127.0.0.2, so Prometheus's relabelling names them apart), four ranks of one run (0-1 on node 0,
2-3 on node 1, each its own process), Prometheus with ``deploy/prometheus.yml`` and
``deploy/simic-alerts.yml`` (scraping and evaluating every second, durations shortened) and
Alertmanager with ``deploy/alertmanager.yml`` as shipped. Faults are driven one by one and each is
awaited in Alertmanager's API.
"""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.parse import urlencode

from simic.producer import Emitter

from .conftest import (
    DEPLOY, WAIT_S, Server, binary, dashboard_queries, load_yaml, needs, prometheus_config, rules_for_test, run_tool, start_alertmanager,
    start_prometheus, until, write_yaml,
)

pytestmark = needs("prometheus", "promtool", "alertmanager")

RUN = "cluster"
NODES = ("127.0.0.1", "127.0.0.2")  # the node label Prometheus derives from each target's address
SILENT_AFTER_S = 4

# Shortened for the test (the shipped values are minutes); every other character of the rule file is as shipped.
SHORT = {
    "SimicConditionActive": {"for": "1s"},
    "SimicRankSilent": {"expr": ("> 120", f"> {SILENT_AFTER_S}")},
    "SimicRanksDiverge": {"for": "1s"},
    "SimicConsumerDown": {"for": "1s"},
}
SIDECAR_CONFIG = f"""\
[rules.silent_producer]
min_silence_s = {SILENT_AFTER_S}
"""


def alerts(alertmanager: Server, alertname: str, **labels: str) -> list[dict]:
    """Alertmanager's active alerts of that name whose labels include ``labels``."""
    return [
        alert for alert in alertmanager.get("/api/v2/alerts?active=true")
        if alert["labels"]["alertname"] == alertname and labels.items() <= alert["labels"].items()
    ]


def receivers(alert: dict) -> list[str]:
    return [receiver["name"] for receiver in alert["receivers"]]


def test_faults_on_two_nodes_reach_alertmanager_grouped_by_run(tmp_path: Path, socket_dir, daemons, ranks, servers):
    """A NaN on one rank, a stopped rank, a straggler and a sidecar going down each raise the
    documented alert in Alertmanager, routed by severity and grouped by run across nodes; a rank
    that ended its run is never called silent."""
    # -- two nodes: a sidecar each, with its metrics port -----------------------------------------
    sidecar_config = tmp_path / "sidecar.toml"
    sidecar_config.write_text(SIDECAR_CONFIG)
    nodes = [
        daemons(f"ipc://{socket_dir}/node-{i}.ipc", tmp_path / f"node-{i}" / "logs", "--config", str(sidecar_config),
                "--metrics-port", "0", "--metrics-host", host)
        for i, host in enumerate(NODES)
    ]
    targets = [node.wait_for("serving metrics on").rsplit("http://", 1)[1].split("/", 1)[0] for node in nodes]

    # -- Alertmanager and Prometheus with the shipped files ---------------------------------------
    engine = tmp_path / "engine"
    engine.mkdir()
    rules = write_yaml(engine / "simic-alerts.yml", rules_for_test(SHORT))
    run_tool(binary("promtool"), "check", "rules", rules)
    alertmanager = start_alertmanager(engine, DEPLOY / "alertmanager.yml")
    servers.append(alertmanager)
    alertmanager.wait_ready()
    config = write_yaml(engine / "prometheus.yml", prometheus_config(
        targets=targets, alertmanager=alertmanager.base.removeprefix("http://"), interval="1s"))
    prometheus = start_prometheus(engine, config)
    servers.append(prometheus)
    prometheus.wait_ready()
    _drive_faults(nodes, prometheus, alertmanager, ranks)


def _drive_faults(nodes, prometheus: Server, alertmanager: Server, ranks) -> None:
    explain = lambda: prometheus.log_tail(10) + "\n" + alertmanager.log_tail(10)  # noqa: E731

    def scraped() -> bool:
        active = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
        return len(active) == 2 and all(target["health"] == "up" for target in active)

    until("two sidecars scraped", scraped, explain)
    assert sorted(t["labels"]["node"] for t in prometheus.get("/api/v1/targets")["data"]["activeTargets"]) == list(NODES)

    # -- four ranks of one run: rank 1 gets a NaN at step 5, rank 3 (node 1) steps 10x slower -----
    world = 4
    procs = {
        0: ranks.start(nodes[0].endpoint, RUN, 0, world),
        1: ranks.start(nodes[0].endpoint, RUN, 1, world, "--nan-at", "5"),
        2: ranks.start(nodes[1].endpoint, RUN, 2, world),
        3: ranks.start(nodes[1].endpoint, RUN, 3, world, "--step-every", "10"),
    }
    # A second run on node 1, one rank, also with a NaN: Alertmanager must keep it apart.
    with Emitter(nodes[1].endpoint, run_id="other", heads=["policy"]) as emitter:
        for step in range(4):
            emitter.emit("head_grad_norms", step=step, norms={"policy": 0.5}, total=float("nan") if step == 2 else 0.5)
            emitter.flush()

    # NaN on one rank: critical, about that run and rank, to the pager.
    (nan,) = until("critical alert for the NaN on rank 1",
                   lambda: alerts(alertmanager, "SimicCriticalTrainingAlert", run_id=RUN, rank="1", rule="non_finite"), explain)
    assert nan["labels"]["node"] == NODES[0]
    assert nan["labels"]["severity"] == "critical" and receivers(nan) == ["pager"]
    assert "non_finite on run cluster rank 1" in nan["annotations"]["summary"]

    # A straggler on node 1 against fast ranks on node 0: only the view across nodes sees it.
    (diverge,) = until("ranks-diverge alert", lambda: alerts(alertmanager, "SimicRanksDiverge", run_id=RUN), explain)
    assert receivers(diverge) == ["chat"]

    # Every query of the Grafana dashboard, its variables set to this run, draws this run's data.
    for where, query in dashboard_queries():
        if query.startswith("label_values("):  # Grafana's, not PromQL: the series and label it lists
            metric, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
            query = f"count by ({label}) ({metric})"
        query = query.replace("$run_id", RUN).replace("$node", NODES[0]).replace("$__rate_interval", "1m")
        answer = prometheus.get("/api/v1/query?" + urlencode({"query": query}))
        assert answer["status"] == "success" and answer["data"]["result"], f"dashboard {where}: {query} drew nothing: {answer}"
        if where == "Training step per rank":
            assert {(r["metric"]["node"], r["metric"]["rank"]) for r in answer["data"]["result"]} == {
                (NODES[0], "0"), (NODES[0], "1"), (NODES[1], "2"), (NODES[1], "3")}

    # Rank 0 ends its run; then rank 2 is stopped (hung). Rank 2 is called silent, rank 0 never is,
    # although rank 0 has been quiet for longer.
    procs[0].send_signal(signal.SIGUSR1)
    assert procs[0].wait(timeout=WAIT_S) == 0
    nodes[0].wait_for(f"run {RUN} rank 0 session")  # the sidecar's "... ended (ok)" line
    procs[2].send_signal(signal.SIGSTOP)
    silent = until("rank-silent alert for the stopped rank 2", lambda: alerts(alertmanager, "SimicRankSilent", run_id=RUN, rank="2"),
                   explain)
    assert silent[0]["labels"]["node"] == NODES[1] and receivers(silent[0]) == ["pager"]
    assert "0" not in {alert["labels"]["rank"] for alert in alerts(alertmanager, "SimicRankSilent")}
    # The sidecar's own silent_producer rule says the same, as a critical alert about rank 2.
    until("critical silent_producer alert for rank 2",
          lambda: alerts(alertmanager, "SimicCriticalTrainingAlert", run_id=RUN, rank="2", rule="silent_producer"), explain)

    # Grouped by run: one group holds the critical alerts of run "cluster" from both nodes, the other run has its own.
    groups = {(g["labels"]["alertname"], g["labels"].get("run_id")): g for g in alertmanager.get("/api/v2/alerts/groups")}
    cluster = groups[("SimicCriticalTrainingAlert", RUN)]
    assert cluster["receiver"]["name"] == "pager"
    assert {(a["labels"]["rank"], a["labels"]["rule"]) for a in cluster["alerts"]} >= {("1", "non_finite"), ("2", "silent_producer")}
    assert {a["labels"]["node"] for a in cluster["alerts"]} == set(NODES)
    assert {a["labels"]["run_id"] for a in cluster["alerts"]} == {RUN}
    other = groups[("SimicCriticalTrainingAlert", "other")]
    assert [(a["labels"]["rank"], a["labels"]["rule"]) for a in other["alerts"]] == [("0", "non_finite")]
    assert groups[("SimicRanksDiverge", RUN)]["receiver"]["name"] == "chat"

    # A sidecar going down pages too.
    assert nodes[1].stop() == 0
    (down,) = until("consumer-down alert for node 1", lambda: alerts(alertmanager, "SimicConsumerDown", node=NODES[1]), explain)
    assert receivers(down) == ["pager"]

    # Every rule evaluated without an error all along.
    evaluated = [rule for group in prometheus.get("/api/v1/rules")["data"]["groups"] for rule in group["rules"]]
    assert len(evaluated) == len(load_yaml(DEPLOY / "simic-alerts.yml")["groups"][0]["rules"])
    assert [(rule["name"], rule["lastError"]) for rule in evaluated if rule["health"] != "ok"] == []
