"""In-process profiling tools built on the test fakes (not collected by pytest)."""
