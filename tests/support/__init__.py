"""What the tests and the benchmarks both need to stand up a service: free ports and waits
(``net``), throwaway databases (``databases``), child processes, a private redis-server and the
environment of a service process (``processes``), tiny job specs (``specs``), and the skip-or-fail
rule for a missing service (``services``), and loading a script by path (``scripts``).

Plain functions and classes, not fixtures: the benchmarks are scripts. tests/conftest.py wraps
them in fixtures. Import as ``tests.support.<module>``; a benchmark puts the repository root on
``sys.path`` first, as it already does for ``api`` and ``ssl_core``.
"""
