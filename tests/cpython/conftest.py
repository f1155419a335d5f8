# CPython's vendored test module runs under unittest, in a subprocess started by
# tests/test_stdlib_conformance.py: pytest must not collect it itself.
collect_ignore_glob = ["*"]
