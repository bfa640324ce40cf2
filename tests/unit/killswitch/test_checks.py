"""gateway.killswitch.checks: the spared probe paths are the health endpoints' own paths."""

from gateway.endpoints.health import HEALTH, READY
from gateway.killswitch.checks import SPARED_PATHS


def test_spared_paths_are_the_probes() -> None:
    assert frozenset((HEALTH, READY)) == SPARED_PATHS
