"""The benchmark scripts run end to end (``--quick``) and print their tables. No timing is asserted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SCRIPTS = [("emit_cost.py", "| variant |"), ("wire_size.py", "| kind |"), ("consumer_throughput.py", "| variant | events/s |"),
           ("producer_faults.py", "| consumer | events | sent | dropped |"), ("decode_paths.py", "| candidate | µs/event (median) |")]


class TestBenchScripts:
    @pytest.mark.parametrize(("script", "header"), SCRIPTS)
    def test_quick_run_prints_a_markdown_table(self, script: str, header: str) -> None:
        """With --quick the script exits 0 and prints a markdown table with its header row."""
        result = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert header in result.stdout
        assert "|---|" in result.stdout

    @pytest.mark.parametrize(("script", "header"), SCRIPTS)
    def test_help_describes_the_options(self, script: str, header: str) -> None:
        """--help exits 0 and names --quick."""
        result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "--quick" in result.stdout


def quick(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), "--quick", *args], capture_output=True, text=True, timeout=120)


class TestCompiledJudge:
    def test_the_compiled_judge_decides_as_the_interpreted_one(self) -> None:
        """compiled_judge.py builds ``_rise`` with mypyc (when mypy and a C compiler are there) and prints the three
        variants' timings; it exits 1 if any judged differently from the interpreted one."""
        pytest.importorskip("mypyc")
        if shutil.which("cc") is None:
            pytest.skip("no C compiler")
        result = subprocess.run([sys.executable, str(BENCH / "compiled_judge.py"), "--quick"], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        for variant in ("interpreted, called from Python", "compiled, called from Python", "compiled with the caller's loop"):
            assert f"| {variant}" in result.stdout, variant
        assert "the same in every variant" in result.stdout


class TestConsumerBenches:
    def test_consumer_throughput_times_both_workloads(self) -> None:
        """consumer_throughput.py --quick prints a table for the head_grad_norms and the mixed-step workload."""
        result = quick("consumer_throughput.py")
        assert result.returncode == 0, result.stderr
        assert "### head_grad_norms:" in result.stdout and "### mixed step:" in result.stdout
        assert result.stdout.count("| pipeline: accounting + all") == 4
        assert result.stdout.count("rules judging nothing (the floor) |") == 2

    def test_the_floor_gives_every_rule_its_events_and_judges_nothing(self) -> None:
        """The floor's rules are the real rules (same kinds, same cadence, the shared batch loop), with a check
        where the rule has one and a tick where it has one: the dispatch timed is the real rules' dispatch."""
        from bench.consumer_throughput import judging_nothing, rules_judging_nothing
        from simic.consumer import ConsumerConfig
        from simic.consumer.analysis import RULES
        from simic.consumer.analysis._rule import Rule
        from simic.consumer.pipeline.build import analysis_stages

        config = ConsumerConfig()
        real, floor = analysis_stages(config), rules_judging_nothing(config)
        assert [type(stage).__name__.removesuffix("JudgingNothing") for stage in floor] == [type(stage).__name__ for stage in real]
        assert all(isinstance(stage, type(kept)) for stage, kept in zip(floor, real))
        for rule in RULES.values():
            empty = judging_nothing(rule)
            assert issubclass(empty, rule) and empty.kinds == rule.kinds and empty.per_update == rule.per_update
            assert empty.consume_now is Rule.consume_now
            assert (empty.check is Rule.check) == (rule.check is Rule.check)
            assert (empty.tick is Rule.tick) == (rule.tick is Rule.tick)

    def test_per_rule_times_every_rule_after_the_update_combiner(self) -> None:
        """consumer_throughput.py --per-rule prints, per workload, the update combiner's own cost and a row for every
        registered rule, each over accounting and the combiner (the rules that count updates read its output)."""
        from simic.consumer.analysis import RULES

        result = quick("consumer_throughput.py", "--per-rule")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("| rule (") == 2
        assert result.stdout.count("us/event over accounting and the update combiner |") == 2
        assert result.stdout.count("| (the update combiner itself, over accounting alone) |") == 2
        for name in RULES:
            assert len(re.findall(rf"^\| {name} \| -?\d+\.\d\d \|$", result.stdout, re.MULTILINE)) == 2, name

    def test_cpu_time_is_said_in_every_table(self) -> None:
        """With --cpu-time both consumer benches time with the process's CPU time, and say so above each table."""
        throughput = quick("consumer_throughput.py", "--cpu-time")
        assert throughput.returncode == 0, throughput.stderr
        assert throughput.stdout.count("(CPU time)") == 2 and "wall clock" not in throughput.stdout
        replayed = quick("replay_speed.py", "--cpu-time")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "best of 1 (CPU time)" in replayed.stdout

    def test_decode_paths_times_the_codec_beside_the_other_ways(self) -> None:
        """decode_paths.py --quick times decode_message and the pydantic candidates on both workloads (msgspec's rows only where it is installed)."""
        result = quick("decode_paths.py")
        assert result.returncode == 0, result.stdout + result.stderr
        for row in ("| decode_message (this tree) |", "| model_validate per row |", '| validator per row, extra="ignore" |',
                    "| union adapter per message (kind sent) |"):
            assert result.stdout.count(row) == 2, row

    def test_replay_speed_replays_every_event_it_wrote(self) -> None:
        """replay_speed.py --quick writes logs, replays them in process (plain and compressed) and through the CLI, sets
        replay beside the live pipeline taking the same messages from memory, and counts every event."""
        result = quick("replay_speed.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "| events | messages | log MB |" in result.stdout and "| CLI end to end" in result.stdout
        assert "| events | bytes/event plain | bytes/event zstd |" in result.stdout and "| fresh values every step |" in result.stdout
        assert "| events | replay: events/s | live, rules only: events/s | replay / live | live, recording: events/s |" in result.stdout
        assert "every event written was replayed and counted: yes" in result.stdout

    def test_drift_shape_runs_the_rule_with_the_settings_given(self) -> None:
        """drift_shape.py --quick prints one row per noise level; --config reaches the rule (a bad key is refused)."""
        result = quick("drift_shape.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "| noise (log) | slow drift found within 5 updates |" in result.stdout and "| 0.1 | " in result.stdout
        changed = quick("drift_shape.py", "--config", "head_jump=1.01")
        assert changed.returncode == 0 and "head_jump=1.01" in changed.stdout
        refused = quick("drift_shape.py", "--config", "head_jump=0.5")
        assert refused.returncode != 0 and "head_jump" in refused.stderr

    def test_log_damage_finds_nothing_invented_and_nothing_forged(self) -> None:
        """log_damage.py --quick damages a format-2 log every way it knows: no exception, no invented or forged frame served."""
        result = quick("log_damage.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "| a bit of a forged-segment carrier's head |" in result.stdout
        assert "nothing invented, nothing forged served, no exception: yes" in result.stdout

    def test_log_read_cost_reads_plain_and_compressed(self) -> None:
        """log_read_cost.py --quick prints the bytes and reading cost of a plain and a compressed log."""
        result = quick("log_read_cost.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "| 2, plain |" in result.stdout and "| 2, zstd |" in result.stdout

    def test_log_retention_keeps_the_log_within_its_bound(self) -> None:
        """log_retention.py --quick: a real daemon under a byte budget stays within it and accounts for every event."""
        result = quick("log_retention.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "log within the bound: yes; every event accounted for: yes" in result.stdout

    def test_alert_latency_receives_every_alert(self) -> None:
        """alert_latency.py --quick: a real producer and consumer; all 50 critical alerts arrive and no event is lost."""
        result = quick("alert_latency.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "| critical (the NaN) | 50 of 50 |" in result.stdout
        assert "| lost (sequence gaps) / dropped by the producer / rejected | 0 / 0 / 0 |" in result.stdout
        assert "every alert and event delivered: yes" in result.stdout

    @pytest.mark.parametrize(("script", "option"), [("replay_speed.py", "--sizes"), ("alert_latency.py", "--rate")])
    def test_help_describes_the_options(self, script: str, option: str) -> None:
        """--help exits 0 and names --quick and the script's main option."""
        result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "--quick" in result.stdout and option in result.stdout


class TestExporterOverhead:
    def test_quick_run_times_every_variant_and_the_sidecar_exports_everything(self) -> None:
        """exporter_overhead.py --quick runs the reference trainer in all five variants (the trainer writing to
        TensorBoard and wandb itself, the sidecar exporting to both) and prints the table; no export was dropped."""
        pytest.importorskip("tensorboardX", reason="the tensorboard extra")
        pytest.importorskip("wandb", reason="the wandb extra")
        result = subprocess.run([sys.executable, str(BENCH / "exporter_overhead.py"), "--quick", "--updates", "2"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "| variant | steps/s (median) | min-max | x (a), median of rounds | trainer CPU ms/update (median) | x (a) | trainer thread CPU ms/update handing on (median) |" in result.stdout
        for variant in ("(a) no logging", "(b) SummaryWriter in the trainer", "(c) wandb.log in the trainer (offline)",
                        "(d) simic, sidecar exports to TensorBoard and wandb", "(d0) simic, sidecar without exporters"):
            assert f"| {variant} |" in result.stdout, variant
        assert "every run of (d): 0 events dropped (queue full)" in result.stdout
        assert "0 dropped (queue full), 0 failed" in result.stdout

    def test_sb3_workload_writes_what_the_callbacks_emitter_sends(self) -> None:
        """--workload sb3 --quick: sb3-contrib's RecurrentPPO with SimicCallback, one timed update, in (a), (b) (the trainer
        writes with SummaryWriter what the callback's emitter would send: the replaced transport reached that emitter)
        and (d0) (the real send, timed, to a sidecar). A run whose events did not go through the benchmark's transport
        fails the script. Three trainer processes, not all five variants: (c) and (d) differ from (b) and (d0) only in
        the writer, which the ppo_lstm test covers."""
        pytest.importorskip("sb3_contrib", reason="the sb3 extra")
        pytest.importorskip("tensorboardX", reason="the tensorboard extra")
        result = subprocess.run([sys.executable, str(BENCH / "exporter_overhead.py"), "--workload", "sb3", "--quick", "--updates", "1",
                                 "--variants", "a,b,d0"], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "sb3-contrib RecurrentPPO + SimicCallback" in result.stdout and "1 updates x 256 steps timed per run" in result.stdout
        for variant in ("(a) no logging", "(b) SummaryWriter in the trainer", "(d0) simic, sidecar without exporters"):
            assert f"| {variant} |" in result.stdout, variant
        handed = dict(re.findall(r"(?:^|; )(a|b|d0) [\d.]+ / [\d.]+ / (\d+)", result.stdout, re.MULTILINE))
        assert handed["a"] == "0" and int(handed["b"]) > 0 and int(handed["d0"]) > 0, handed


class TestBenchPackage:
    def test_the_modules_tests_import_leave_sys_path_alone(self) -> None:
        """Importing bench.daemon_load, bench.producer_faults and bench.fuzz_daemon (and what they import)
        changes no entry of sys.path: no test puts bench/ at the front of the path for the tests after it."""
        code = ("import sys; before = list(sys.path); "
                "import bench.daemon_load, bench.producer_faults, bench.fuzz_daemon; "
                "print(sys.path == before, sorted(name for name in sys.modules if name.split('.')[0] in "
                "('_workload', 'emit_cost', 'daemon_load', 'producer_faults', 'fuzz_daemon')))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["True", "[]"]


class TestMachineLoad:
    def test_runs_the_command_beside_the_load_and_returns_its_status(self) -> None:
        """machine_load.py runs the command --repeat times beside busy processes and a disk writer, says how
        each run ended, and exits with the command's status."""
        command = [sys.executable, str(BENCH / "machine_load.py"), "--cpu", "1", "--disk-mib", "1", "--repeat", "2", "--",
                   sys.executable, "-c", "import sys; sys.exit(3)"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "load: run 1/2: exit 3" in result.stdout and "load: run 2/2: exit 3" in result.stdout
        assert "load: 1 busy process(es), disk writer 1 MiB per pass with fsync" in result.stdout


class TestGpuBenchesOnCpu:
    """The GPU benchmarks' CPU path (the numbers come from a GPU; see docs/BENCHMARKS.md)."""

    def test_gpu_overhead_prints_every_variant_the_breakdown_and_the_per_call_table(self) -> None:
        pytest.importorskip("torch")
        result = quick("gpu_overhead.py", "--device", "cpu")
        assert result.returncode == 0, result.stderr
        for row in ("| 8 | off |", "| 8 | simic |", "| 8 | simic dense |", "| timers | lstm_state |", "| lstm_state (all envs) |"):
            assert row in result.stdout, row
        assert ", 0 refused" in result.stdout

    def test_compiled_ppo_eager_path_sends_every_event_it_makes(self) -> None:
        """The LeanRL-style trainer without compile and graph: all three variants run, every event arrives
        and decodes, no collector error (the script exits 1 otherwise); ``--calls`` prints every line's cost."""
        pytest.importorskip("torch")
        result = quick("compiled_ppo.py", "--eager", "--device", "cpu", "--calls")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "; eager" in result.stdout
        for line in ("| timer: make, start(), stop() |", "| ppo_update (8 device values, a learning rate) |",
                     "| flush: one iteration's readouts, 4 row events |"):
            assert line in result.stdout
        for row in ("| off |", "| simic |", "| simic, per update |"):
            assert row in result.stdout
        produced = re.search(r"produced (\d+), sent (\d+), dropped 0, invalid 0; receiver: \d+ messages, (\d+) events, 0 refused; collector errors 0", result.stdout)
        assert produced and produced.group(1) == produced.group(2) == produced.group(3)
