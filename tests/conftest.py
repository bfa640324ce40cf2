from hypothesis import settings

pytest_plugins = ["tests.support.fixtures"]

# No per-example deadline (Hypothesis' default is 200 ms): one example that ran long because the
# process lost the CPU on a loaded host (CI: 2 cores, gateways and Redis beside) fails the test
# as "Unreliable test timings" when its replay is fast. No test here asserts speed through it;
# tests that set their own deadline still may. Loaded before any test module's @settings.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")
