"""Development tools: the Manager emulator and the worker simulator (tests, demo, benchmarks).

Not part of the installed package: the production image carries only the operator."""
