"""SimicCallback on real SB3 / sb3-contrib training runs, each against a real simic-consumer it spawns.

What arrives is read back from the consumer's event log and compared with a direct computation made
beside SB3: a test callback wraps ``torch.nn.utils.clip_grad_norm_`` (which SB3 calls once per
minibatch) to record what it returned and each head's gradient norm (float64, from ``.grad``) just
before it clipped; SB3's own logger writes its ``train/`` values to a JSON file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import A2C, DQN, PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402

from simic.producer import Emitter, NullEmitter  # noqa: E402
from simic.producer.integrations.sb3 import SimicCallback, policy_heads  # noqa: E402
from simic.schemas import LogReader, decode_message  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sb3_recurrent_ppo.py"
DOC = ROOT / "docs" / "INTEGRATION.md"
WAIT_S = 120.0
"""Hang guard for subprocesses (not a timing assertion)."""
REL = 1e-5
"""float32 gradients reduced in two different orders agree to about this."""
PER_UPDATE = ["episodes", "head_grad_norms", "lstm_health", "metrics", "param_updates", "ppo_update", "step_timing"]


def load_example() -> Any:
    """examples/sb3_recurrent_ppo.py as a module (loaded once)."""
    module = sys.modules.get("sb3_recurrent_ppo")
    if module is None:
        spec = importlib.util.spec_from_file_location("sb3_recurrent_ppo", EXAMPLE)
        module = sys.modules["sb3_recurrent_ppo"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def read_events(log_dir: Path) -> list:
    events = []
    for frame in LogReader(log_dir):
        try:
            events += decode_message(frame.payload).events
        except Exception:
            continue  # not an event message
    return events


def of(events: list, kind: str) -> list:
    return [e for e in events if e.kind == kind]


def rms(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


Rows = Callable[[Any], dict[str, list[tuple[torch.Tensor, slice | None]]]]


class Recorder(BaseCallback):
    """Beside SimicCallback: per update, each clip_grad_norm_ call's return and the heads' norms just before it."""

    def __init__(self, rows: Rows, logger_dir: Path) -> None:
        super().__init__()
        self.rows = rows
        self.logger_dir = logger_dir
        self.update = -1
        self.clips: dict[int, list[tuple[float, dict[str, float]]]] = {}

    def _on_training_start(self) -> None:
        self.model.set_logger(configure(str(self.logger_dir), ["json"]))

    def _on_rollout_end(self) -> None:
        self.update += 1  # train() of this update comes next

    def _on_step(self) -> bool:
        return True

    def clip(self, original: Callable) -> Callable:
        def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
            parameters = list(parameters)
            heads = {}
            for name, parts in self.rows(self.model.policy).items():
                square = 0.0
                for param, rows in parts:
                    grad = param.grad if rows is None else param.grad[rows]
                    square += float(grad.double().square().sum())
                heads[name] = math.sqrt(square)
            total = original(parameters, max_norm, *args, **kwargs)
            self.clips.setdefault(self.update, []).append((float(total), heads))
            return total

        return clip_grad_norm_

    def logged(self) -> list[dict]:
        """SB3's JSON log: one row per dump (before each train(), so row k holds update k-2's train/ values)."""
        return [json.loads(line) for line in (self.logger_dir / "progress.json").read_text().splitlines()]


def run(tmp_path: Path, make_model: Callable[[], Any], rows: Rows, updates: int, **callback_kwargs: Any):
    """Train ``updates`` updates with SimicCallback (spawning its consumer) and a Recorder; the log's events."""
    model = make_model()
    recorder = Recorder(rows, tmp_path / "sb3-log")
    simic = SimicCallback(run_id="test", spawn_consumer={"log_dir": tmp_path / "telemetry"}, **callback_kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.utils, "clip_grad_norm_", recorder.clip(torch.nn.utils.clip_grad_norm_))
        model.learn(updates * model.n_steps * model.n_envs, callback=[simic, recorder])
    return model, simic, recorder, read_events(tmp_path / "telemetry")


def linear(module: torch.nn.Linear, rows: slice | None = None) -> list:
    return [(module.weight, rows), (module.bias, rows)]


class Run:
    """One finished training run: the model, the callbacks, and the events the consumer logged."""

    def __init__(self, model: Any, simic: SimicCallback, recorder: Recorder, events: list, updates: int) -> None:
        self.model, self.simic, self.recorder, self.events, self.updates = model, simic, recorder, events, updates


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory) -> Run:
    """The example (RecurrentPPO, MultiDiscrete([3, 4]) named recall and count, LSTM actor and critic), 4 updates."""
    example = load_example()
    tmp = tmp_path_factory.mktemp("recurrent")
    args = example.Args(log_dir=str(tmp / "telemetry"), updates=4)
    rows = lambda p: {"recall": linear(p.action_net, slice(0, 3)), "count": linear(p.action_net, slice(3, 7)),  # noqa: E731
                      "value": linear(p.value_net)}
    recorder = Recorder(rows, tmp / "sb3-log")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.utils, "clip_grad_norm_", recorder.clip(torch.nn.utils.clip_grad_norm_))
        model, simic = example.train(args, callbacks=[recorder])
    return Run(model, simic, recorder, read_events(tmp / "telemetry"), 4)


@pytest.fixture(scope="module")
def discrete(tmp_path_factory) -> Run:
    """PPO on CartPole (Discrete), 3 updates of 64 steps in minibatches of 32, 2 epochs."""
    rows = lambda p: {"action": linear(p.action_net), "value": linear(p.value_net)}  # noqa: E731
    make = lambda: PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=1, device="cpu")  # noqa: E731
    return Run(*run(tmp_path_factory.mktemp("discrete"), make, rows, 3), 3)


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Run:
    """PPO on Pendulum (Box, episodes cut at 50 steps): heads mean and log_std, 3 updates."""
    rows = lambda p: {"mean": linear(p.action_net), "log_std": [(p.log_std, None)], "value": linear(p.value_net)}  # noqa: E731
    make = lambda: PPO("MlpPolicy", gym.make("Pendulum-v1", max_episode_steps=50), n_steps=64, batch_size=32, n_epochs=2, seed=1, device="cpu")  # noqa: E731
    return Run(*run(tmp_path_factory.mktemp("box"), make, rows, 3), 3)


RUNS = ["recurrent", "discrete", "box"]
HEADS = {"recurrent": ["recall", "count", "value"], "discrete": ["action", "value"], "box": ["mean", "log_std", "value"]}


@pytest.fixture(params=RUNS)
def trained(request) -> tuple[str, Run]:
    return request.param, request.getfixturevalue(request.param)


class TestWhatArrives:
    def test_one_event_of_each_kind_per_update_with_steps_in_update_order(self, trained):
        """Steps are the update numbers 0..N-1; each update sends one head_grad_norms, param_updates, step_timing and ppo_update."""
        name, run = trained
        steps = list(range(run.updates))
        for kind in ("head_grad_norms", "param_updates", "step_timing", "ppo_update"):
            assert [e.step for e in of(run.events, kind)] == steps, kind
        assert set(PER_UPDATE) - {"lstm_health"} <= {e.kind for e in run.events}
        (end,) = of(run.events, "run_end")
        assert end.status == "ok" and end.step == run.updates - 1 and end.dropped == 0
        assert run.simic.emitter.closed and run.simic.emitter.stats.dropped == 0

    def test_run_start_names_the_heads_and_the_algorithm(self, trained):
        """run_start lists the heads (action heads, then value) and the algorithm's settings."""
        name, run = trained
        (start,) = of(run.events, "run_start")
        assert start.heads == HEADS[name]
        assert start.config["algorithm"] == type(run.model).__name__
        assert start.config["max_grad_norm"] == run.model.max_grad_norm and start.device == "cpu"

    def test_samples_are_the_minibatch_steps_of_each_update(self, trained):
        """samples = the number of clip_grad_norm_ calls (optimizer steps) SB3 made in that update."""
        name, run = trained
        assert [e.samples for e in of(run.events, "head_grad_norms")] == [len(run.recorder.clips[u]) for u in range(run.updates)]
        assert all(len(run.recorder.clips[u]) == 4 for u in range(run.updates))  # 2 minibatches x 2 epochs
        updates = of(run.events, "param_updates")
        assert [e.samples for e in updates] == [len(run.recorder.clips[u]) for u in range(run.updates)]
        assert all(set(e.ratios) == set(HEADS[name]) and e.learning_rate == run.model.learning_rate for e in updates)
        assert all(r is None or 0 < r < 1 for e in updates for r in e.ratios.values())

    def test_norms_are_the_rms_over_minibatches_of_the_pre_clip_norms(self, trained):
        """total = RMS of what clip_grad_norm_ returned; each head = RMS of its own pre-clip norm; post-clip as the clip made it."""
        name, run = trained
        max_norm = run.model.max_grad_norm
        for event in of(run.events, "head_grad_norms"):
            clips = run.recorder.clips[event.step]
            totals = [total for total, _ in clips]
            assert event.stage == "pre_clip" and event.max_norm == max_norm
            assert event.total == pytest.approx(rms(totals), rel=REL) and event.pre_clip_total == event.total
            assert event.post_clip_total == pytest.approx(rms([t * min(1.0, max_norm / (t + 1e-6)) for t in totals]), rel=REL)
            assert list(event.norms) == HEADS[name]
            for head in HEADS[name]:
                assert event.norms[head] == pytest.approx(rms([heads[head] for _, heads in clips]), rel=REL), head

    def test_ppo_update_holds_what_sb3_logged(self, trained):
        """ppo_update of update k equals SB3's own logged train/ values of that update (entropy = -entropy_loss)."""
        name, run = trained
        events = {e.step: e for e in of(run.events, "ppo_update")}
        rows = run.recorder.logged()
        assert len(rows) == run.updates
        for row in rows[1:]:  # dump k (1-based iteration) holds the train/ values of update k-2
            event = events[row["time/iterations"] - 2]
            expected = {"approx_kl": "train/approx_kl", "clip_fraction": "train/clip_fraction",
                        "policy_loss": "train/policy_gradient_loss", "value_loss": "train/value_loss",
                        "learning_rate": "train/learning_rate", "clip_range": "train/clip_range", "loss": "train/loss"}
            for field, key in expected.items():
                assert getattr(event, field) == row[key], field
            assert event.entropy == {"policy": -row["train/entropy_loss"]}
            ev = row["train/explained_variance"]
            assert event.explained_variance == ev or (math.isnan(ev) and math.isnan(event.explained_variance))
        metrics = [e for e in of(run.events, "metrics") if "train/n_updates" in e.values]
        assert [e.values["train/n_updates"] for e in metrics] == [2.0 * (u + 1) for u in range(run.updates)]

    def test_step_timing_holds_rollout_and_train(self, trained):
        """One step_timing per update with both phases, positive, on the host clock (CPU)."""
        name, run = trained
        for event in of(run.events, "step_timing"):
            assert set(event.phases_ms) == {"rollout", "train"} and event.clock == "cpu"
            assert all(ms > 0 for ms in event.phases_ms.values())

    def test_episodes_are_the_monitor_returns(self, trained):
        """Each episodes event holds the returns and lengths Monitor reported during that update's rollout."""
        name, run = trained
        episodes = of(run.events, "episodes")
        assert episodes and all(e.count == len(e.returns) == len(e.lengths) > 0 for e in episodes)
        assert sorted({e.step for e in episodes}) == [e.step for e in episodes]
        reported = [r for e in episodes for r in e.returns]
        assert reported[-len(run.model.ep_info_buffer):] == [info["r"] for info in run.model.ep_info_buffer][-len(reported):]


class TestRecurrentPPO:
    def test_lstm_actor_and_critic_state_once_per_update(self, recurrent):
        """lstm_health arrives for "actor" and "critic" at every update, over the 4 environments of the rollout."""
        events = of(recurrent.events, "lstm_health")
        assert [(e.step, e.name) for e in events] == [(u, n) for u in range(4) for n in ("actor", "critic")]
        assert all(e.envs == 4 and e.has_nan is False and e.h_norm > 0 for e in events)

    def test_lstm_state_is_the_rollout_state(self, recurrent):
        """The last update's actor and critic statistics are those of the state the last rollout left."""
        states = recurrent.model._last_lstm_states  # read here only, as the reference
        last = {e.name: e for e in of(recurrent.events, "lstm_health") if e.step == 3}
        for name, (h, c) in (("actor", states.pi), ("critic", states.vf)):
            assert last[name].h_norm == pytest.approx(float(h.double().norm()), rel=REL)
            assert last[name].c_norm == pytest.approx(float(c.double().norm()), rel=REL)

    def test_the_example_runs_as_a_script(self, tmp_path):
        """python examples/sb3_recurrent_ppo.py --log-dir D --updates 2 exits 0, and simic-consumer inspect shows 2 updates."""
        log_dir = tmp_path / "telemetry"
        result = subprocess.run([sys.executable, str(EXAMPLE), "--log-dir", str(log_dir), "--updates", "2"],
                                capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 updates" in result.stdout and "dropped 0" in result.stdout
        inspect = subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(log_dir), "--json"],
                                 capture_output=True, text=True, timeout=WAIT_S, check=True)
        (session,) = json.loads(inspect.stdout)["runs"]["sb3-recurrent-ppo"]
        assert session["status"] == "ok" and session["lost"] == 0 and session["last_step"] == 1
        assert {kind: session["events_by_kind"][kind] for kind in ("head_grad_norms", "lstm_health", "step_timing")} == {
            "head_grad_norms": 2, "lstm_health": 4, "step_timing": 2}


class TestHeads:
    def test_default_heads_per_action_space(self):
        """Discrete: action; MultiDiscrete and MultiBinary: one head per sub-action (rows of action_net); Box: mean, log_std; then value."""
        assert list(policy_heads(PPO("MlpPolicy", "CartPole-v1").policy)) == ["action", "value"]
        assert list(policy_heads(PPO("MlpPolicy", "Pendulum-v1").policy)) == ["mean", "log_std", "value"]
        example = load_example()
        policy = example.make_model(example.Args()).policy
        heads = policy_heads(policy)
        assert list(heads) == ["action_0", "action_1", "value"]
        assert heads["action_1"] == [(policy.action_net.weight, slice(3, 7)), (policy.action_net.bias, slice(3, 7))]
        assert list(policy_heads(policy, ["recall", "count"])) == ["recall", "count", "value"]

    def test_multibinary_has_one_row_per_sub_action_and_large_spaces_one_head(self):
        """MultiBinary(3): heads action_0..2, each one row of action_net; MultiBinary(40) (over 32 sub-actions): one head."""

        class Bits(gym.Env):
            def __init__(self, n: int) -> None:
                self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,))
                self.action_space = gym.spaces.MultiBinary(n)

        policy = PPO("MlpPolicy", Bits(3)).policy
        heads = policy_heads(policy)
        assert list(heads) == ["action_0", "action_1", "action_2", "value"]
        assert heads["action_2"] == [(policy.action_net.weight, slice(2, 3)), (policy.action_net.bias, slice(2, 3))]
        assert list(policy_heads(PPO("MlpPolicy", Bits(40)).policy)) == ["action", "value"]

    def test_a_policy_without_action_net_is_refused(self):
        """Without action_net and value_net there are no default heads: ValueError naming heads=."""
        with pytest.raises(ValueError, match="pass heads="):
            policy_heads(torch.nn.Linear(2, 2))

    def test_action_names_that_do_not_fit_are_refused(self):
        """Two names for a Discrete space, three for two sub-actions, or a sub-action named value: ValueError."""
        with pytest.raises(ValueError, match="one action head"):
            policy_heads(PPO("MlpPolicy", "CartPole-v1").policy, ["a", "b"])
        example = load_example()
        policy = example.make_model(example.Args()).policy
        with pytest.raises(ValueError, match="2 sub-actions"):
            policy_heads(policy, ["a", "b", "c"])
        with pytest.raises(ValueError, match="taken by the value head"):
            policy_heads(policy, ["value", "b"])


class TestCallback:
    def test_off_without_endpoint_or_spawn(self, monkeypatch):
        """Without SIMIC_ENDPOINT and spawn_consumer the emitter is a NullEmitter and training runs as usual."""
        monkeypatch.delenv("SIMIC_ENDPOINT", raising=False)
        simic = SimicCallback(run_id="off")
        A2C("MlpPolicy", "CartPole-v1", n_steps=8, seed=1).learn(32, callback=simic)
        assert isinstance(simic.emitter, NullEmitter)

    def test_setup_errors_are_raised_early(self):
        """Unknown keywords and emitter= with keywords raise at construction; an off-policy algorithm when learn() starts."""
        with pytest.raises(ValueError, match="unknown keyword"):
            SimicCallback(run_idd="x")
        with pytest.raises(ValueError, match="either emitter"):
            SimicCallback(NullEmitter(), run_id="x")
        with pytest.raises(ValueError, match="on-policy"):
            DQN("MlpPolicy", "CartPole-v1", learning_starts=0).learn(8, callback=SimicCallback(NullEmitter()))

    def test_learn_twice_continues_the_update_numbers_in_a_new_session(self, tmp_path):
        """A second learn() with the callback makes a new emitter (and sidecar, same log dir); its updates count on."""
        model = A2C("MlpPolicy", "CartPole-v1", n_steps=8, seed=1)
        simic = SimicCallback(run_id="twice", spawn_consumer={"log_dir": tmp_path / "telemetry"})
        model.learn(2 * 8, callback=simic)
        first = simic.emitter
        model.learn(2 * 8, callback=simic, reset_num_timesteps=False)
        assert simic.emitter is not first and first.closed and simic.emitter.closed
        events = read_events(tmp_path / "telemetry")
        assert [e.step for e in of(events, "head_grad_norms")] == [0, 1, 2, 3]
        assert [e.samples for e in of(events, "head_grad_norms")] == [1, 1, 1, 1]  # A2C: one gradient step per update
        assert [(e.step, e.status) for e in of(events, "run_end")] == [(1, "ok"), (3, "ok")]
        assert len({e.session for e in events}) == 2

    def test_a_given_emitter_is_used_and_left_open(self, tmp_path):
        """emitter=: the callback sends through it and leaves closing to its owner."""
        emitter = Emitter(None, run_id="given", heads=policy_heads(PPO("MlpPolicy", "CartPole-v1").policy),
                          spawn_consumer={"log_dir": tmp_path / "telemetry"})
        simic = SimicCallback(emitter)
        PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, seed=1).learn(64, callback=simic)
        assert simic.emitter is emitter and not emitter.closed
        emitter.close()
        events = read_events(tmp_path / "telemetry")
        assert [e.step for e in of(events, "head_grad_norms")] == [0, 1]
        assert of(events, "run_start")[0].heads == ["action", "value"]

    def test_stop_on_critical_stops_training_at_the_next_rollout(self, tmp_path):
        """A critical alert (a NaN sent at update 1) is polled at the end of a rollout: learn() returns early, run_end ok."""

        class InjectNaN(BaseCallback):
            rollouts = 0

            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                self.rollouts += 1
                if self.rollouts == 2:  # the rollout of update 1
                    simic.emitter.emit("episodes", step=1, returns=[float("nan")], lengths=[1], count=1)
                    simic.emitter.flush()
                    assert simic.emitter.sidecar.wait_for_line("non_finite", timeout_s=WAIT_S)

        model = PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, seed=1)
        simic = SimicCallback(run_id="stop", spawn_consumer={"log_dir": tmp_path / "telemetry"}, stop_on_critical=True)
        model.learn(30 * 32, callback=[simic, InjectNaN()])
        assert simic.stop_alert is not None and simic.stop_alert.rule == "non_finite" and simic.stop_alert.step == 1
        events = read_events(tmp_path / "telemetry")
        updates = [e.step for e in of(events, "head_grad_norms")]
        assert updates == list(range(len(updates))) and 2 <= len(updates) < 30
        assert of(events, "run_end")[0].status == "ok"


class TestIntegrationDoc:
    def test_the_documented_lines_send_every_update(self, tmp_path, monkeypatch):
        """The SB3 snippet of docs/INTEGRATION.md, run as written (2 updates of RecurrentPPO on CartPole), logs both updates."""
        from sb3_contrib import RecurrentPPO

        code = re.search(r"<!-- test: sb3 -->\s*```python\n(.*?)```", DOC.read_text(), re.S).group(1)
        assert len(code.strip().splitlines()) <= 10
        monkeypatch.chdir(tmp_path)
        namespace = {"RecurrentPPO": RecurrentPPO, "env": "CartPole-v1", "total_timesteps": 2 * 128}
        exec(compile(code, f"{DOC}:sb3", "exec"), namespace)
        events = read_events(tmp_path / "runs" / "7" / "telemetry")
        assert [e.step for e in of(events, "head_grad_norms")] == [0, 1]
        assert [(e.step, e.name) for e in of(events, "lstm_health")] == [(0, "actor"), (0, "critic"), (1, "actor"), (1, "critic")]
