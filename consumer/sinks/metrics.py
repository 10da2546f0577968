"""Prometheus metrics: what the sidecar received, lost, refused and raised, served over HTTP.

``simic-consumer run --metrics-port N`` adds this stage. It owns a private
:class:`prometheus_client.CollectorRegistry` (never the global one, so two daemons in one process,
as in tests, do not collide) and its HTTP server (started by :meth:`start`, stopped by
:meth:`close`). Counters are updated in the pipeline, once per batch; the server thread only reads.
What it reads besides the batches is given to it: the accounting (losses per producer) and the
exporters when it is built, the daemon's queue (:meth:`MetricsSink.watch_queue`), the pipeline's
per-stage counts (:meth:`MetricsSink.export_stages`) and the event log's maintenance
(:meth:`MetricsSink.export_log`), read when scraped.

Metrics (``_total`` counters count from this process's start, as Prometheus expects)::

    simic_messages_received_total                        messages that reached the pipeline
    simic_events_received_total{kind}                    valid events, by kind
    simic_events_lost_total{run_id,rank}                 sequence numbers that never arrived (gaps)
    simic_producer_dropped_events{run_id,rank}           events the producer says it dropped itself (its own count)
    simic_messages_rejected_total{reason}                whole messages refused
    simic_events_rejected_total{reason}                  single events refused
    simic_alerts_total{rule,severity}                    alerts fired
    simic_run_alerts_total{run_id,rank,rule,severity}    alerts fired, by the run and rank they are about
    simic_alerts_cleared_total{rule}                     alerts cleared
    simic_alerts_active{rule,run_id,rank}                conditions fired and not yet cleared
    simic_queue_depth_messages / simic_queue_capacity_messages   the daemon's bounded queue
    simic_log_frames_lost_total                          event-log frames that could not be written (= the event_log stage's dropped)
    simic_stage_accepted_batches_total{stage}            batches (messages and clock ticks) each stage consumed
    simic_stage_refused_batches_total{stage}             batches on which a stage raised (counted, logged; the batch went on)
    simic_stage_dropped_batches_total{stage}             accepted batches whose output a stage lost (log write failed, ...)
    simic_log_segments_removed_total{reason}             closed log segments removed by retention (max_total_bytes, max_age)
    simic_log_bytes_removed_total{reason}                bytes of those segments
    simic_log_segments_compressed_total                  closed log segments compressed (zstd)
    simic_log_bytes                                      bytes the log's segments take on disk (after the last maintenance pass)
    simic_last_step{run_id,rank}                         largest training step received
    simic_last_event_age_seconds{run_id,rank}            seconds since the rank's last message arrived; none once it ended its run
    simic_grad_norm{run_id,rank,head}                    newest pre-clip gradient norm per head
    simic_grad_norm_global{run_id,rank,stage}            newest total norm: pre_clip, post_clip, total
    simic_lstm_state_rms{run_id,rank,state}              newest RMS of h and c
    simic_ppo_approx_kl{run_id,rank} / simic_ppo_entropy{run_id,rank,head}
    simic_pipeline_last_batch_age_seconds                seconds since the pipeline last ran (ticks included): liveness
    simic_handshakes_failed_total{socket,reason}         CurveZMQ handshakes refused (only with --curve-secret)
    simic_export_events_total{exporter}                  events (alerts included) an exporter wrote (--tensorboard, --wandb)
    simic_export_dropped_events_total{exporter}          events not exported: the exporter's queue was full (it is too slow)
    simic_export_failed_events_total{exporter}           events of batches whose writing raised
    simic_export_queue_depth_messages{exporter} / simic_export_queue_capacity_messages{exporter}

The per-rank values are the newest of each measurement as ``simic.consumer.pipeline.ranks`` reads them (the
dashboard shows the same). A value the producer sent as missing removes its sample (no sample, not 0);
NaN is exported as NaN.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from ..pipeline.accounting import Accounting
from ..pipeline.contract import Batch, Stage, StageCounts
from ..pipeline.ranks import LatestByRank, RankKey, RankLatest
from .event_log import EventLogSink
from .export import ExportSink

RETENTION_REASONS = ("max_total_bytes", "max_age")

__all__ = ["MetricsSink", "StageMetrics"]


class StageMetrics(Collector):
    """The pipeline's per-stage counts as Prometheus counters, read from ``counts`` when scraped.

    Args:
        counts: what :meth:`simic.consumer.pipeline.contract.Pipeline.stage_counts` returns, when called.
    """

    def __init__(self, counts: Callable[[], Mapping[str, StageCounts]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        families = {
            "accepted": CounterMetricFamily("simic_stage_accepted_batches", "Batches (messages and clock ticks) each stage consumed.",
                                            labels=["stage"]),
            "refused": CounterMetricFamily("simic_stage_refused_batches", "Batches on which a stage raised (counted and logged; the "
                                           "batch went on to the next stage).", labels=["stage"]),
            "dropped": CounterMetricFamily("simic_stage_dropped_batches", "Batches a stage accepted but whose output it lost "
                                           "(an event-log write that failed, dead letters over their limit, alerts PUB full, an exporter "
                                           "behind or failing).",
                                           labels=["stage"]),
        }
        for stage, count in counts.items():
            families["accepted"].add_metric([stage], count.accepted)
            families["refused"].add_metric([stage], count.refused)
            families["dropped"].add_metric([stage], count.dropped)
        yield from families.values()
        event_log = counts.get(EventLogSink.name)
        yield CounterMetricFamily("simic_log_frames_lost", "Event-log frames that could not be written (disk full, I/O error).",
                                  value=event_log.dropped if event_log is not None else 0)


class _ExportCollector(Collector):
    """The exporters' counts, read when scraped (each exporter counts in its own thread)."""

    def __init__(self, sinks: Sequence[ExportSink]) -> None:
        self.sinks = list(sinks)

    def collect(self):
        written = CounterMetricFamily("simic_export_events", "Events (alerts included) an exporter wrote.", labels=["exporter"])
        dropped = CounterMetricFamily("simic_export_dropped_events", "Events not exported because the exporter's queue was full.",
                                      labels=["exporter"])
        failed = CounterMetricFamily("simic_export_failed_events", "Events of batches whose export raised.", labels=["exporter"])
        depth = GaugeMetricFamily("simic_export_queue_depth_messages", "Messages waiting for the exporter.", labels=["exporter"])
        capacity = GaugeMetricFamily("simic_export_queue_capacity_messages", "Size of the exporter's queue (export.queue_batches).",
                                     labels=["exporter"])
        for sink in self.sinks:
            label = [sink.exporter.name]
            written.add_metric(label, sink.stats.written)
            dropped.add_metric(label, sink.stats.dropped)
            failed.add_metric(label, sink.stats.failed)
            depth.add_metric(label, sink.queued)
            capacity.add_metric(label, sink.capacity)
        yield from (written, dropped, failed, depth, capacity)


class MetricsSink(Stage):
    """Exports the daemon's counts as Prometheus metrics on ``http://host:port/metrics``.

    Args:
        port: TCP port to serve on; 0 lets the system choose (see :attr:`port` after ``start``).
        host: address to bind; loopback by default. Prometheus on another host needs ``0.0.0.0``.
        accounting: the pipeline's accounting stage, whose per-producer losses and producer-side drops
            are exported (``simic_events_lost_total``, ``simic_producer_dropped_events``); None: not exported.
        exports: the daemon's exporters, whose counts and queues are exported (``simic_export_*``).
        serve: start the HTTP server (tests of the stage alone pass False and read :attr:`registry`).
    """

    name = "metrics"
    quiet_while_catching_up = True  # counters count from this process's start

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *, accounting: Accounting | None = None,
                 exports: Sequence[ExportSink] = (), serve: bool = True) -> None:
        self.host = host
        self.port = port
        self.serve = serve
        self.registry = CollectorRegistry(auto_describe=True)
        self._server = None
        self._thread = None
        self._accounting = accounting
        self._log: EventLogSink | None = None
        self._lost_seen: dict[tuple[str, int, int], int] = {}
        self._ranks: LatestByRank[RankLatest] = LatestByRank()
        self._aging: set[RankKey] = set()  # the ranks with a message age (heard from, not ended)
        self._last_batch_ns = time.time_ns()
        self._active: Counter[tuple[str, str, str]] = Counter()
        r = self.registry
        self.messages = PromCounter("simic_messages_received", "Messages that reached the pipeline.", registry=r)
        self.events = PromCounter("simic_events_received", "Valid events received, by kind.", ["kind"], registry=r)
        self.lost = PromCounter("simic_events_lost", "Events lost: sequence numbers that never arrived.", ["run_id", "rank"], registry=r)
        self.producer_dropped = Gauge("simic_producer_dropped_events", "Events the producer session reports it dropped itself (queue full, no consumer).",
                                      ["run_id", "rank"], registry=r)
        self.rejected_messages = PromCounter("simic_messages_rejected", "Whole messages refused, by reason.", ["reason"], registry=r)
        self.rejected_events = PromCounter("simic_events_rejected", "Single events refused, by reason.", ["reason"], registry=r)
        self.alerts = PromCounter("simic_alerts", "Alerts fired, by rule and severity.", ["rule", "severity"], registry=r)
        self.run_alerts = PromCounter("simic_run_alerts", "Alerts fired, by the run and rank they are about.",
                                      ["run_id", "rank", "rule", "severity"], registry=r)
        self.alerts_cleared = PromCounter("simic_alerts_cleared", "Alerts cleared, by rule.", ["rule"], registry=r)
        self.alerts_active = Gauge("simic_alerts_active", "Alert conditions fired and not yet cleared.", ["rule", "run_id", "rank"], registry=r)
        self.queue_depth = Gauge("simic_queue_depth_messages", "Messages waiting between the receiver and the pipeline.", registry=r)
        self.queue_capacity = Gauge("simic_queue_capacity_messages", "Size of the bounded queue (daemon.queue_messages).", registry=r)
        r.register(_LogMaintenanceCollector(self))  # read from the maintenance thread's counts when scraped
        self.last_step = Gauge("simic_last_step", "Largest training step received.", ["run_id", "rank"], registry=r)
        self.last_event_age = Gauge("simic_last_event_age_seconds", "Seconds since the rank's last message arrived.", ["run_id", "rank"], registry=r)
        self.grad_norm = Gauge("simic_grad_norm", "Newest gradient L2 norm per head (pre-clip or unstaged).", ["run_id", "rank", "head"], registry=r)
        self.grad_norm_global = Gauge("simic_grad_norm_global", "Newest total gradient norm: pre_clip, post_clip or total (stage not given).",
                                      ["run_id", "rank", "stage"], registry=r)
        self.lstm_rms = Gauge("simic_lstm_state_rms", "Newest RMS of the LSTM hidden (h) and cell (c) state.", ["run_id", "rank", "state"], registry=r)
        self.approx_kl = Gauge("simic_ppo_approx_kl", "Newest approximate KL of a PPO update.", ["run_id", "rank"], registry=r)
        self.entropy = Gauge("simic_ppo_entropy", "Newest mean entropy per action head.", ["run_id", "rank", "head"], registry=r)
        self.batch_age = Gauge("simic_pipeline_last_batch_age_seconds", "Seconds since the pipeline last processed a message or clock tick.", registry=r)
        self.batch_age.set_function(lambda: (time.time_ns() - self._last_batch_ns) / 1e9)
        ProcessCollector(registry=r)
        r.register(_ExportCollector(exports))

    # -- wiring ----------------------------------------------------------------------------------------

    def export_stages(self, counts: Callable[[], Mapping[str, StageCounts]]) -> None:
        """Export per-stage counts (and ``simic_log_frames_lost_total``), read from ``counts`` when scraped:
        the pipeline's :meth:`~simic.consumer.pipeline.contract.Pipeline.stage_counts`, once the pipeline is built."""
        self.registry.register(StageMetrics(counts))

    def export_log(self, log: EventLogSink) -> None:
        """Export the event log's maintenance (``simic_log_segments_removed_total``, ...), read from its
        thread's counts when scraped."""
        self._log = log

    def watch_queue(self, depth: Callable[[], int], capacity: int) -> None:
        """Export the daemon's queue depth (read when scraped) and capacity."""
        self.queue_depth.set_function(lambda: float(depth()))
        self.queue_capacity.set(capacity)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        # What the accounting holds now (restored from a checkpoint, caught up from the log) was
        # counted by an earlier process: counters start from here.
        if self._accounting is not None:
            self._lost_seen = {key: state.lost for key, state in self._accounting.producers.items()}
        self._last_batch_ns = time.time_ns()
        if self.serve and self._server is None:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
            self.port = self._server.server_port

    async def consume(self, batch: Batch) -> None:
        self._last_batch_ns = time.time_ns()
        self._count_alerts(batch)  # a clock tick raises alerts too (silent_producer's scan of a lone quiet producer)
        if batch.tick:
            return
        self.messages.inc()
        if batch.rejected is not None:
            self.rejected_messages.labels(batch.rejected.reason.value).inc()
        for error in batch.errors:
            self.rejected_events.labels(error.reason.value).inc()
        if not batch.events:
            return
        kinds = batch.kind_index()
        for kind, events in kinds.items():
            self.events.labels(kind).inc(len(events))
        latest = self._ranks.update(batch.events, batch.recv_ns)
        run_id, rank = latest.run_id, str(latest.rank)
        self.last_step.labels(run_id, rank).set(latest.last_step)
        if (latest.run_id, latest.rank) not in self._aging:
            self._age(latest)
        self._losses(latest, batch.events[0].session)
        # The gauges of what this message measured, from the newest values.
        if "head_grad_norms" in kinds:
            for name, norm in latest.grad_norms.items():
                self._set(self.grad_norm, (run_id, rank, name), norm)
            for stage, total in latest.grad_totals.items():
                self._set(self.grad_norm_global, (run_id, rank, stage), total)
        if "lstm_health" in kinds:
            self._set(self.lstm_rms, (run_id, rank, "h"), latest.h_rms)
            self._set(self.lstm_rms, (run_id, rank, "c"), latest.c_rms)
        if "ppo_update" in kinds:
            self._set(self.approx_kl, (run_id, rank), latest.approx_kl)
            for name, value in latest.entropy.items():
                self.entropy.labels(run_id, rank, name).set(value)
        if "run_end" in kinds:
            self._ended(latest)

    async def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- helpers ---------------------------------------------------------------------------------------

    def _count_alerts(self, batch: Batch) -> None:
        for alert in batch.alerts:
            labels = (alert.rule, alert.run_id, str(alert.rank))
            if alert.cleared:
                self.alerts_cleared.labels(alert.rule).inc()
                self._active[labels] = max(0, self._active[labels] - 1)
            else:
                self.alerts.labels(alert.rule, alert.severity).inc()
                self.run_alerts.labels(alert.run_id, labels[2], alert.rule, alert.severity).inc()
                self._active[labels] += 1
            self.alerts_active.labels(*labels).set(self._active[labels])

    def _age(self, latest: RankLatest) -> None:
        """A rank heard from (for the first time, or again after it ended its run): its message age is read
        from its newest arrival when scraped."""
        self._aging.add((latest.run_id, latest.rank))
        self.last_event_age.labels(latest.run_id, str(latest.rank)).set_function(lambda: (time.time_ns() - latest.last_recv_ns) / 1e9)

    def _losses(self, latest: RankLatest, session: int) -> None:
        """Events lost (counted since start) and dropped by the producer session, from the accounting."""
        if self._accounting is None:
            return
        state = self._accounting.producers.get((latest.run_id, latest.rank, session))
        if state is not None:
            labels = (latest.run_id, str(latest.rank))
            seen = self._lost_seen.get(state.key, 0)
            if state.lost > seen:
                self.lost.labels(*labels).inc(state.lost - seen)
            else:
                self.lost.labels(*labels)  # the series exists (at 0) from the first event on
            self._lost_seen[state.key] = state.lost
            self.producer_dropped.labels(*labels).set(state.producer_dropped)

    def _ended(self, latest: RankLatest) -> None:
        """A rank that ended its run is not silent: its message age goes (until it sends again)."""
        key = (latest.run_id, latest.rank)
        if key in self._aging:
            self.last_event_age.remove(latest.run_id, str(latest.rank))
            self._aging.discard(key)

    def maintenance_counts(self) -> list:
        maintenance = self._log.maintenance if self._log is not None else None
        return [maintenance.counts] if maintenance is not None else []

    @staticmethod
    def _set(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
        """Set a sample, or remove it when the value is missing (no sample, never a made-up 0)."""
        if value is None:
            try:
                gauge.remove(*labels)
            except KeyError:
                pass
        else:
            gauge.labels(*labels).set(value)


class _LogMaintenanceCollector:
    """The event log's maintenance (compression, retention), as counted by its thread since the daemon
    started, read at each scrape: a removal shows at once, not at the next message or tick."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink

    def describe(self):
        return []

    def collect(self):
        counts = self.sink.maintenance_counts()
        removed = CounterMetricFamily("simic_log_segments_removed", "Closed event-log segments removed by retention, by reason.",
                                      labels=["reason"])
        removed_bytes = CounterMetricFamily("simic_log_bytes_removed", "Bytes of the event-log segments removed by retention, by reason.",
                                            labels=["reason"])
        for reason in RETENTION_REASONS:  # every reason from the start, at 0 (alert rules need the series)
            removed.add_metric([reason], sum(c.segments_removed[reason] for c in counts))
            removed_bytes.add_metric([reason], sum(c.bytes_removed[reason] for c in counts))
        yield removed
        yield removed_bytes
        yield CounterMetricFamily("simic_log_segments_compressed", "Closed event-log segments compressed.",
                                  value=sum(c.segments_compressed for c in counts))
        yield GaugeMetricFamily("simic_log_bytes", "Bytes the event log's segments take on disk (after the last maintenance pass).",
                                value=sum(c.log_bytes for c in counts))
