"""The shipped stacks' recorded graphs, shared with the infra tests."""

from tests.infra.conftest import graphs  # noqa: F401 - a fixture, used by name
