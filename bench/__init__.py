"""CoreMQ's benchmarks against Redis, Mosquitto and NATS (issue 7).

``python -m bench fanout|latency|conns|all --compare redis,mqtt,nats``; see
bench/README.md. One load generator speaks every target's protocol with
pre-encoded frames and verifies every delivery byte for byte (or, for
CoreMQ's stamped deliveries, by sequence number), so a run that loses or
reorders a message fails instead of producing a number.
"""
