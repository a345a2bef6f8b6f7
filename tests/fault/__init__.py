"""End-to-end fault tests: the real ``relay run`` process against real brokers, killed and
cut off on purpose (issue 7/9). The harness is :mod:`tests.fault.harness`."""
