"""What the tests, the benchmarks and the demo share: servers and processes, synthetic models, the structure check."""
