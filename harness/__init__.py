"""Running RaftMQ and RabbitMQ as processes on loopback, for the tests and the benchmarks alike:
one node (``raftmq``), a cluster (``cluster``), RabbitMQ 3.10 from Debian (``rabbitmq``),
process groups ended by their id (``procs``) and free ports (``ports``). Test-only helpers (the
management API client, TLS material, a browser, previous releases) stay in tests/harness."""
