"""What the tests and the benchmarks share: a running Loupe and a client for it, databases, data sets."""
