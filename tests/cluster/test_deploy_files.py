"""The files in deploy/ are the ones docs/OPERATIONS.md shows, valid for the tools that read them,
and every metric their queries name is one a real sidecar exports."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from simic.producer import Emitter

from .conftest import DEPLOY, OPERATIONS, WAIT_S, binary, dashboard_queries, load_yaml, needs, run_tool

SHOWN = ["prometheus.yml", "simic-alerts.yml", "alertmanager.yml"]
PROMETHEUS_LABELS = {"job", "instance", "node"}  # added by Prometheus (node by deploy/prometheus.yml's relabelling)
SELECTOR = re.compile(r"\b(simic_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"\blabel_values\(.*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")


def yaml_blocks(markdown: str) -> dict[str, str]:
    """The ```yaml blocks of a page whose first line names a deploy/ file, by that file's name."""
    blocks = {}
    for block in re.findall(r"```yaml\n(.*?)```", markdown, flags=re.S):
        first = block.split("\n", 1)[0]
        if first.startswith("# deploy/"):
            blocks[first.removeprefix("# deploy/").split(":", 1)[0]] = block
    return blocks


def rule_queries() -> list[str]:
    return [rule["expr"] for group in load_yaml(DEPLOY / "simic-alerts.yml")["groups"] for rule in group["rules"]]


def used_metrics(queries: list[str]) -> dict[str, set[str]]:
    """Metric name -> the label names its selectors match on, over all queries."""
    used: dict[str, set[str]] = {}
    for query in queries:
        for name, matchers in SELECTOR.findall(query):
            used.setdefault(name, set()).update(MATCHER.findall(matchers))
    return used


def grouped_by(query: str) -> set[str]:
    """The label names of a query's ``by (...)`` clauses (and of Grafana's ``label_values(metric, label)``)."""
    labels = {label.strip() for clause in GROUPING.findall(query) for label in clause.split(",") if label.strip()}
    return labels | set(LABEL_VALUES.findall(query))


class TestShippedFiles:
    def test_operations_md_shows_each_file_as_shipped(self):
        """Every config block of docs/OPERATIONS.md is, character for character, the file in deploy/ it names."""
        shown = yaml_blocks(OPERATIONS.read_text())
        assert sorted(shown) == sorted(SHOWN)
        for name, block in shown.items():
            assert block == (DEPLOY / name).read_text(), f"docs/OPERATIONS.md shows a {name} other than deploy/{name}"

    @needs("promtool")
    def test_rules_pass_promtool_and_their_unit_tests(self):
        """promtool accepts the rules and their unit tests pass, with the shipped durations and thresholds."""
        assert "SUCCESS: 7 rules found" in run_tool(binary("promtool"), "check", "rules", DEPLOY / "simic-alerts.yml").stdout
        assert "SUCCESS" in run_tool(binary("promtool"), "test", "rules", DEPLOY / "simic-alerts.test.yml").stdout

    @needs("promtool")
    def test_prometheus_config_passes_promtool(self, tmp_path):
        """The Prometheus configuration and the rule file it names check as a whole."""
        for name in ("prometheus.yml", "simic-alerts.yml"):
            shutil.copy(DEPLOY / name, tmp_path / name)
        result = run_tool(binary("promtool"), "check", "config", tmp_path / "prometheus.yml")
        assert "SUCCESS: 1 rule files found" in result.stdout

    @needs("amtool")
    def test_alertmanager_config_passes_amtool(self):
        """amtool accepts the routing, with its two receivers."""
        assert "2 receivers" in run_tool(binary("amtool"), "check-config", DEPLOY / "alertmanager.yml").stdout

    def test_dashboard_is_one_run_across_nodes(self):
        """The Grafana dashboard picks a run from the sidecars' series and every panel queries the chosen data source."""
        dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        assert variables["run_id"]["definition"] == "label_values(simic_last_step, run_id)"
        assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
        assert len({panel["title"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def scrape_families(url: str) -> dict[str, set[str]]:
    """Sample name -> label names of the samples a sidecar exports now."""
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        text = response.read().decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


class TestMetricNames:
    def test_every_metric_the_rules_and_dashboard_query_is_exported(self, tmp_path, socket_dir, daemons):
        """A real sidecar, fed every kind the dashboard draws and a NaN, exports each metric name the rule
        file and the dashboard use, with the labels their selectors match on."""
        daemon = daemons(f"ipc://{socket_dir}/c.ipc", tmp_path / "logs", "--metrics-port", "0")
        url = daemon.wait_for("serving metrics on").rsplit(" ", 1)[1].strip()
        with Emitter(daemon.endpoint, run_id="names", heads=["policy", "value"]) as emitter:
            for step in range(5):
                emitter.emit("head_grad_norms", step=step, norms={"policy": 0.8, "value": 0.6}, stage="pre_clip",
                             total=float("nan") if step == 2 else 1.0, pre_clip_total=1.0, post_clip_total=0.5)
                emitter.emit("lstm_health", step=step, h_rms=0.3, c_rms=0.4)
                emitter.emit("ppo_update", step=step, approx_kl=0.01, entropy={"policy": 1.2})
                emitter.flush()
            # Scraped while the run is open (a rank that ended has no message age).
            deadline = time.monotonic() + WAIT_S
            while "simic_run_alerts_total" not in (exported := scrape_families(url)) or "simic_ppo_entropy" not in exported:
                assert time.monotonic() < deadline, f"the sidecar never exported the NaN's alert:\n{sorted(exported)}"
                time.sleep(0.1)

        dashboard = [query for _, query in dashboard_queries()]
        for where, queries in (("simic-alerts.yml", rule_queries()), ("grafana-dashboard.json", dashboard)):
            used = used_metrics(queries)
            assert len(used) >= 5, f"{where}: the queries were not read: {queries}"
            missing = sorted(set(used) - set(exported))
            assert missing == [], f"{where} queries metrics no sidecar exports: {missing}"
            unknown = {name: sorted(labels - exported[name] - PROMETHEUS_LABELS) for name, labels in used.items()}
            assert {name: labels for name, labels in unknown.items() if labels} == {}, f"{where} matches on labels the metric lacks"
            for query in queries:  # the labels it aggregates by are on the metrics it aggregates
                labels = set().union(PROMETHEUS_LABELS, *(exported[name] for name in used_metrics([query])))
                assert grouped_by(query) <= labels, f"{where}: {query} groups by labels its metrics lack"
        assert daemon.stop() == 0
