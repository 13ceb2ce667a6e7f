"""The SDK's standard tap tests, against a sandbox started for this module."""

from __future__ import annotations

import atexit

from singer_sdk.testing import SuiteConfig, get_tap_test_class

from tap_analytics.sandbox import SandboxConfig, SandboxServer
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import assert_limits_in_range, v1_config, v3_config

# get_tap_test_class builds the test classes at import, so it needs the sandbox's
# address then: a fixture would start too late.
_SERVER = SandboxServer(SandboxConfig(seed=11, v1_jobs=120, v3_workflows=3)).start()
atexit.register(_SERVER.stop)

# The suite's record_schema_matches_transformed_catalog test wants every field of
# every record in the catalog --discover gives. The default schema contract
# (evolve) sends the sandbox's undocumented fields on purpose, announced in a
# SCHEMA at sync time (tests/test_schema_contract.py); discard_value is the mode
# in which that test's premise holds, so the suite runs in it.
CONTRACT = {"schema_contract": "discard_value"}

TestTapAnalyticsV1 = get_tap_test_class(
    tap_class=TapAnalytics,
    config=v1_config(_SERVER, start_date="2024-01-01T00:00:00Z", **CONTRACT),
    suite_config=SuiteConfig(),
)

TestTapAnalyticsV3 = get_tap_test_class(
    tap_class=TapAnalytics,
    config=v3_config(_SERVER, **CONTRACT),
    suite_config=SuiteConfig(),
)


def test_the_standard_tests_asked_no_limit_above_100():
    # Runs after the classes above (file order): the real server's range.
    assert_limits_in_range(_SERVER)
