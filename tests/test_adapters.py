"""Adapter versions: the key of every cache derived from an adapter's values."""

import pytest

from arcsl.engine.adapters import AdapterVersions


def test_every_adapter_starts_at_the_initial_values():
    versions = AdapterVersions(3)
    assert [versions[k] for k in range(3)] == [0, 0, 0] and len(versions) == 3


def test_each_change_gets_a_version_never_used_before_and_reset_returns_to_zero():
    versions = AdapterVersions(2)
    seen = [versions.changed(0), versions.changed(1), versions.changed(0)]
    assert len(set(seen)) == 3 and 0 not in seen
    versions.reset(0)
    assert versions[0] == 0 and versions.changed(0) not in seen  # trained again after a reset: still new


def test_versions_of_the_adapters_a_call_uses():
    versions = AdapterVersions(3)
    trained = versions.changed(2)
    assert versions.of([2, 0, 2]) == {0: 0, 2: trained}


def test_an_adapter_that_does_not_exist_is_refused_by_number():
    with pytest.raises(ValueError, match="adapter 3 does not exist: this engine has num_adapters=3"):
        AdapterVersions(3).changed(3)
