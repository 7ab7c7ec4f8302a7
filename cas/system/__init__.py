"""Operating-system primitives: durable files, the private event loop, forks and worker processes."""
