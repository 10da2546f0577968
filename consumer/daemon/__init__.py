"""``simic-consumer run``: the live daemon, and what keeps it alive and alone on its endpoint.

::

    ZmqPullSource -> backpressure queue -> Pipeline (simic.consumer.pipeline)     serve
                      checkpoint of every stateful stage, catch-up at start        checkpoint
                      one daemon per endpoint; CurveZMQ allow-list                 claim, security
                      dies with its trainer (--exit-with-pid)                      lifecycle
    simic-consumer healthcheck: is a running daemon still processing?              healthcheck

- ``serve``: :func:`serve` wires a source, the queue and the pipeline, runs until SIGINT/SIGTERM, drains.
- ``backpressure``: the queue between the receiver and the pipeline, bounded in messages and bytes.
- ``checkpoint``: ``consumer-state.json``, written atomically; the catch-up on what was logged after it.
- ``claim``: an endpoint is claimed before it is bound; a live one is refused, never taken over.
- ``security``: the CURVE authenticator and its counted handshake failures (key files: ``simic.schemas.transport``).
- ``lifecycle``: the watch on the trainer's pid and the clock-tick note that records its exit.
- ``healthcheck``: the client side of the Docker HEALTHCHECK (asks the metrics endpoint; imports nothing else here).

Only ``serve`` assembles; the others import ``simic.schemas``, the pipeline contract (``checkpoint``)
and third-party libraries, not each other. From outside, the sockets (``sources.zmq_pull``,
``sinks.alert_pub``) use ``claim``'s error and ``security``'s server, and the pipeline contract reads
``lifecycle``'s note on every clock tick (so a replay sees a trainer's exit where the live run did).
"""
