"""The test suite. A package so that ``tests.support`` has one import name in tests and benchmarks."""
