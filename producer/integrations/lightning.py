"""``SimicCallback`` for PyTorch Lightning: per-step telemetry for any ``LightningModule``.

::

    trainer = pl.Trainer(max_steps=..., gradient_clip_val=0.5, callbacks=[SimicCallback(spawn_consumer={"log_dir": "runs/x/telemetry"})])

What each training step sends (``step`` = ``trainer.global_step``, see below):

- ``head_grad_norms`` (``stage="pre_clip"``): per-head and total gradient L2 norms in
  ``on_before_optimizer_step``, which Lightning calls after the backward (and after unscaling AMP
  gradients) and before it clips. With ``gradient_clip_val`` and the ``"norm"`` algorithm the event
  also carries ``max_norm`` and the post-clip total ``clip_grad_norm_`` makes of it.
- ``step_timing``: ``train_batch`` (first ``on_train_batch_start`` of the step to the
  ``on_train_batch_end`` where the optimizer stepped) and ``optimizer`` (``on_before_optimizer_step``
  to the end of ``optimizer.step()``: the clip and the update). CUDA events on a GPU, host time on the CPU.
- ``metrics``: what the module logged for the step with ``self.log(...)`` (``trainer.callback_metrics``,
  names as logged; a metric logged with both ``on_step`` and ``on_epoch`` once, under its own name),
  and ``optimizer/lr`` (the first optimizer's first parameter group). Tensors go as they are: on a GPU
  they are read back at a later ``flush()``, never waited for. After each validation (not the sanity
  check) one more ``metrics`` event holds what it logged, at the ``global_step`` it ran at.

Heads: ``heads={"encoder": "encoder", "head": "classifier"}`` names submodules by attribute path
(``"backbone.layer4"``; a parameter's path works too), or gives modules or parameters; a callable
``heads(pl_module)`` returns such a mapping. Default: one head per direct child module with trainable
parameters (and one per trainable parameter the module holds itself). They are resolved once, at
``on_fit_start``; the total covers every trainable parameter, in ``pl_module.parameters()`` order.

The step rule: ``step`` is ``trainer.global_step``, Lightning's count of optimizer steps. With
``accumulate_grad_batches=k`` the ``k`` batches of one optimizer step share a step: their gradients
are measured once, accumulated, before the clip; ``train_batch`` spans the ``k`` batches; the logged
metrics are those of the step's last batch (as Lightning gives them to its loggers). Steps are
0, 1, 2, ... and match the ``global_step`` the module sees in ``training_step``.

The emitter: ``SimicCallback(run_id=..., spawn_consumer={...})`` (or ``endpoint=...``, or
``$SIMIC_ENDPOINT``; with none of them telemetry is off, a ``NullEmitter``) makes one at
``on_fit_start`` with the rank and world size of the trainer, the head names, and a few settings of
the trainer and the module's ``hparams`` in ``run_start``; it is closed at ``on_fit_end`` (``run_end``
"ok"), on an exception ("error", or "interrupted" for Ctrl-C) and at ``teardown``.
``SimicCallback(emitter=existing)`` uses yours and leaves closing it to you. Either way it is
:attr:`SimicCallback.emitter`; the callback calls its ``flush()`` once per training batch.
``stop_on_critical=True`` sets ``trainer.should_stop`` when the consumer reports a critical alert.

Known limitations:

- Nothing here reads a device value on the host. Lightning itself, though, turns a metric logged with
  ``prog_bar=True`` into a Python number whenever ``trainer.callback_metrics`` is read (its progress
  bar does so every batch anyway). With the progress bar off, such a metric costs one host sync per
  step when ``metrics=True``: log it without ``prog_bar`` or pass ``metrics=False``.
- Epoch aggregates (``on_epoch=True``) of training metrics are not sent: their per-step values are.
- Manual optimization: every ``optimizer.step()`` Lightning counts is a ``global_step`` and sends its
  own ``head_grad_norms``; timings and metrics go to the step the batch started at.
- Several ranks on one host: give them one consumer (``$SIMIC_ENDPOINT``, started beside the job),
  not ``spawn_consumer`` without an endpoint (each rank would start a private one).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package of Lightning 1.x and 2.x
    import pytorch_lightning as pl

from simic.producer.collectors.watch import default_heads
from simic.producer.emitter import Emitter, EmitterSettings, NullEmitter

__all__ = ["SimicCallback"]

log = logging.getLogger("simic.producer")

HeadsSpec = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]

_MAX_HPARAMS = 64
"""Most ``hparams`` entries copied into ``run_start`` (scalars only)."""


class SimicCallback(pl.Callback):
    """Sends per-step gradient norms, timings and logged metrics of a ``LightningModule`` to ``simic-consumer``.

    Args:
        run_id: names the run (all ranks share it). Default: ``$SIMIC_RUN_ID``, else the module's class name.
        emitter: an emitter of yours; the callback uses it and never closes it. Excludes the
            arguments that make one (``endpoint``, ``spawn_consumer``, ``settings``, ``config``).
        endpoint: where the consumer listens; default ``$SIMIC_ENDPOINT``.
        spawn_consumer: start a ``simic-consumer`` sidecar for the run (True, or keyword arguments
            of :func:`simic.producer.spawn_consumer`, e.g. ``{"log_dir": "runs/x/telemetry"}``).
        heads: head name -> attribute path | module | parameters, or ``callable(pl_module)`` returning
            that; default: the module's direct children with trainable parameters.
        metrics: send what the module logs (``trainer.callback_metrics``) and the learning rate.
        stop_on_critical: set ``trainer.should_stop`` at a critical, uncleared alert about this run.
        settings: the emitter's :class:`~simic.producer.EmitterSettings`.
        config: more run configuration for ``run_start`` (merged over the trainer's and the hparams).

    Raises ValueError for arguments it cannot use, here, and for heads it cannot resolve, at ``on_fit_start``.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        emitter: Emitter | NullEmitter | None = None,
        endpoint: str | None = None,
        spawn_consumer: bool | Mapping[str, Any] = False,
        heads: HeadsSpec | None = None,
        metrics: bool = True,
        stop_on_critical: bool = False,
        settings: EmitterSettings | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if emitter is not None and (endpoint is not None or spawn_consumer or settings is not None or config is not None):
            raise ValueError("pass either emitter= or the arguments that make one (endpoint, spawn_consumer, settings, config)")
        if emitter is not None and not hasattr(emitter, "head_grad_norms"):
            raise ValueError(f"emitter must be a simic Emitter or NullEmitter, got {type(emitter).__name__}")
        if heads is not None and not (callable(heads) or (isinstance(heads, Mapping) and heads)):
            raise ValueError("heads must be a non-empty mapping of head name -> attribute path, module or parameters, or a callable")
        if run_id is not None and not (isinstance(run_id, str) and run_id):
            raise ValueError("run_id must be a non-empty string")
        self.emitter = emitter
        """The emitter in use: yours, or the one made at ``on_fit_start`` (None before that)."""
        self.run_id = run_id
        self.endpoint = endpoint
        self.spawn_consumer = spawn_consumer
        self.heads = heads
        self.send_metrics = metrics
        self.stop_on_critical = stop_on_critical
        self.settings = settings
        self.config = dict(config or {})
        self.critical_alerts: list[Any] = []
        """The critical alerts that stopped (or would have stopped) the run, as the consumer sent them."""
        self._owns = emitter is None
        self._groups: Any = None
        self._max_norm: float | None = None
        self._batch_timer: Any = None
        self._optimizer_timer: Any = None
        self._timing_step: int | None = None  # the step train_batch is running for, None: not running
        self._optimizer_timing = False
        self._step = 0  # trainer.global_step at the start of the current batch
        self._hooked: set[int] = set()
        self._handles: list[Any] = []
        self._seen: dict[str, Any] = {}  # callback_metrics as last read: name -> tensor (identity tells fresh ones)
        self._sent: set[str] = set()  # names sent as training metrics

    # -- fit start: the emitter, the heads, the timers ---------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        heads = self._resolve_heads(pl_module)
        if self._owns and (self.emitter is None or self.emitter.closed):
            self.emitter = self._make_emitter(trainer, pl_module, list(heads))
        emitter = self.emitter
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        self._groups = emitter.head_groups(heads, params=trainable)
        algorithm = trainer.gradient_clip_algorithm
        clip = trainer.gradient_clip_val
        by_norm = algorithm is None or str(getattr(algorithm, "value", algorithm)) == "norm"
        self._max_norm = float(clip) if by_norm and clip and pl_module.automatic_optimization else None
        self._batch_timer = emitter.timer("train_batch", device=pl_module.device)
        self._optimizer_timer = emitter.timer("optimizer", device=pl_module.device)
        self._timing_step = None
        self._optimizer_timing = False
        self._seen, self._sent = {}, set()

    def _resolve_heads(self, pl_module: Any) -> dict[str, Any]:
        spec = self.heads
        if spec is None:
            return default_heads(pl_module)
        if callable(spec) and not isinstance(spec, Mapping):
            spec = spec(pl_module)
            if not isinstance(spec, Mapping) or not spec:
                raise ValueError("heads(pl_module) must return a non-empty mapping of head name -> module or parameters")
        heads = {}
        for name, item in spec.items():
            if isinstance(item, str):
                try:
                    item = pl_module.get_submodule(item)
                except AttributeError:
                    try:
                        item = [pl_module.get_parameter(item)]
                    except AttributeError:
                        raise ValueError(f"head {name!r}: {type(pl_module).__name__} has no submodule or parameter {item!r}") from None
            heads[name] = item
        return heads

    def _make_emitter(self, trainer: Any, pl_module: Any, heads: list[str]) -> Emitter | NullEmitter:
        config = {"trainer": _trainer_config(trainer), **_hparams(pl_module), **self.config}
        kwargs = dict(
            run_id=self.run_id or os.environ.get("SIMIC_RUN_ID") or type(pl_module).__name__,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            heads=heads,
            config=config,
            device=_device_name(trainer.strategy.root_device),
            spawn_consumer=self.spawn_consumer,
        )
        if self.settings is not None:
            kwargs["settings"] = self.settings
        if self.endpoint is not None:
            return Emitter(self.endpoint, **kwargs)
        return Emitter.from_env(**kwargs)

    # -- each training batch ------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step
        if self._timing_step is None:  # the first batch of a step (several with gradient accumulation)
            self._timing_step = self._step
            self._batch_timer.start()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """After the backward (and AMP's unscale), before Lightning clips: the pre-clip gradients."""
        emitter = self.emitter
        emitter.head_grad_norms(trainer.global_step, self._groups, stage="pre_clip", max_norm=self._max_norm)
        if id(optimizer) not in self._hooked and hasattr(optimizer, "register_step_post_hook"):
            self._hooked.add(id(optimizer))
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
        self._optimizer_timing = True
        self._optimizer_timer.start()

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._optimizer_timing:
            self._optimizer_timing = False
            self._optimizer_timer.stop(self._step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        emitter = self.emitter
        step = self._step
        if self._optimizer_timing:  # AMP skipped optimizer.step() (non-finite gradients): no post hook ran
            self._optimizer_timing = False
            self._optimizer_timer.stop(step)
        stepped = trainer.global_step != step
        if stepped and self._timing_step is not None:
            self._batch_timer.stop(self._timing_step)
            self._timing_step = None
        if stepped and self.send_metrics:
            values = self._fresh_metrics(trainer)
            self._sent.update(values)
            lr = _learning_rate(trainer)
            if lr is not None:
                values["optimizer/lr"] = lr
            if values:
                emitter.metrics(step, values)
        emitter.flush()
        if self.stop_on_critical:
            self._check_alerts(trainer)

    def _fresh_metrics(self, trainer: Any) -> dict[str, Any]:
        """The entries of ``callback_metrics`` that changed since the last read (by identity: Lightning
        puts a new tensor there for each metric of the running loop; the others stay as they were)."""
        current = trainer.callback_metrics
        seen = self._seen
        fresh: dict[str, Any] = {}
        taken: set[int] = set()
        for name, value in current.items():
            if value is seen.get(name) or id(value) in taken:  # unchanged, or the same value under its _step name
                continue
            if getattr(value, "numel", None) is not None and value.numel() != 1:
                continue
            taken.add(id(value))
            fresh[name] = value
        self._seen = dict(current)
        return fresh

    def _check_alerts(self, trainer: Any) -> None:
        for alert in self.emitter.poll_alerts():
            if alert.severity == "critical" and not alert.cleared:
                self.critical_alerts.append(alert)
                if not trainer.should_stop:
                    log.warning("simic: stopping at step %d: critical alert %s at step %d: %s",
                                trainer.global_step, alert.rule, alert.step, alert.message)
                trainer.should_stop = True

    # -- validation ---------------------------------------------------------------------------------

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """What the validation logged (epoch values, names as logged), at the step it ran at."""
        if trainer.sanity_checking or not self.send_metrics or self.emitter is None:
            return
        values = {name: value for name, value in self._fresh_metrics(trainer).items() if name not in self._sent}
        if values:
            self.emitter.metrics(trainer.global_step, values)
            self.emitter.flush()

    # -- the end --------------------------------------------------------------------------------------

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self._finish("interrupted")
        else:
            self._finish("error", f"{type(exception).__name__}: {exception}"[:4096])

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._finish()

    def _finish(self, status: str = "ok", error: str | None = None) -> None:
        """Remove the optimizer hooks; close an emitter of our own (``run_end``), flush one of yours."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooked.clear()
        emitter = self.emitter
        if emitter is None or emitter.closed:
            return
        if self._owns:
            emitter.close(status, error)
        else:
            emitter.flush()


def _trainer_config(trainer: Any) -> dict[str, Any]:
    algorithm = trainer.gradient_clip_algorithm
    return {
        "max_steps": trainer.max_steps,
        "max_epochs": trainer.max_epochs,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": None if algorithm is None else str(getattr(algorithm, "value", algorithm)),
        "precision": str(trainer.precision),
        "strategy": type(trainer.strategy).__name__,
        "lightning_version": getattr(pl, "__version__", None),
    }


def _hparams(pl_module: Any) -> dict[str, Any]:
    """The module's ``hparams`` that are plain scalars (a few: the run's identity, not its archive)."""
    hparams = getattr(pl_module, "hparams", None)
    if not isinstance(hparams, Mapping):
        return {}
    plain = {str(k)[:128]: v for k, v in hparams.items()
             if v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 1024)}
    return {"hparams": dict(list(plain.items())[:_MAX_HPARAMS])} if plain else {}


def _device_name(device: Any) -> str:
    if getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return str(device)


def _learning_rate(trainer: Any) -> float | None:
    """The first optimizer's first parameter group's learning rate, when it is a plain number."""
    optimizers = trainer.optimizers
    if not optimizers or not optimizers[0].param_groups:
        return None
    lr = optimizers[0].param_groups[0].get("lr")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None
