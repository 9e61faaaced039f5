"""The hostile-tenant suite (issue 19): on one fresh node, tenant B attacks with only its
own vhost's permissions (long dead-letter names, pathological regexes, many consumers,
enumeration, a spoofed user_id, malformed API input, half-open HTTP, raw AMQP, a 20 MiB
message) while tenant A publishes with confirms and measures. The figures: attacks and
outcomes, A's confirmed messages lost (must be 0) and its publish→confirm p99 (< 200 ms),
tracebacks in the node log (0), the largest event-loop stall seen from outside.

``python -m tests.hostile [--minutes N]``; ``make test`` runs one round
(test_hostile_short.py), ``make fuzz`` five minutes of rounds at a larger scale.
"""
