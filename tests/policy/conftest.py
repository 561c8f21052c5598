"""The recorded graphs of the shipped stacks, shared with the infra tests."""

from tests.infra.conftest import graphs, graphs_with_secrets  # noqa: F401
