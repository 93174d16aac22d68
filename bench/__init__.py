"""Side-by-side benchmark of the bridge against raw Kafka and raw Celery (``python -m bench``).

One command starts its own local stack (Kafka KRaft + redis-server on free ports, state in a
temporary directory) and real ``celery worker`` processes, then measures, on the same topic,
Redis, workers and in-flight window:

- K: a raw confluent-kafka consume loop;
- P: a raw Celery ``send_task`` loop (one reused producer, Redis result backend configured);
- D: the workers draining a prefilled queue;
- R: a Celery-only round trip (publish, wait for every result, at most W outstanding);
- B: the bridge's dispatch rate with no worker consuming its queue;
- E: the bridge end to end (``ckb run`` process, records produced beforehand, until committed).

See ``docs/benchmarks.md`` for what every figure means and the latest results.
"""

#: the no-op task every phase runs (:mod:`bench.noop_app`)
TASK_NAME = "bench.noop"
#: the task the latency measurements run: returns ``time.time()`` taken as its body starts
STAMP_TASK = "bench.stamp"
