"""Independent references the tests (and benchmarks) compare the package against."""
