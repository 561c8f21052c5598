from tests.infra.conftest import graphs  # noqa: F401
