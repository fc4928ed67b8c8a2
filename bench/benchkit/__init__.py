"""What the benchmarks share: the machine's description, the stack and PostgreSQL they start,
the service defaults they measure, and the pieces of their command lines and reports."""
