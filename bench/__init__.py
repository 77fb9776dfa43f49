"""Load generator for the qqchat daemon: ``python -m bench WORKLOAD [options]``.

It drives a daemon over loopback with verified traffic (every message counted
and checked) and reports wall-clock throughput and latency next to the daemon's
own CPU time per operation, read from /proc: the generator is Python too and
tops out long before a fast server does, so CPU per operation is the figure
that compares across machines and servers. docs/benchmarks.md has the method
and the recorded figures.
"""
