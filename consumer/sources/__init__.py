"""Where batches come from: ``zmq_pull`` (the live ZeroMQ PULL socket) and ``log_files`` (recorded logs,
merged by arrival time). Each turns messages into :class:`~simic.consumer.pipeline.contract.Batch`
objects for the pipeline; ``zmq_pull`` uses the daemon's endpoint claim and CURVE server."""
