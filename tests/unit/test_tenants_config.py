"""The tenants file (core/tenants.py): parsing, validation, lookup by key digest, queue names."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.tenants import DEFAULT_TENANT, TenantsFileError, load_tenants, parse_tenants, queue_name, queue_names

GOOD = """
[tenants.alice]
keys = ["key-alice", "key-alice-2"]
weight = 2
max_queued = 100
rate = "600/minute"

[tenants.bob]
keys = ["key-bob"]
"""


def test_a_valid_file_gives_each_key_its_tenant(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(GOOD)
    tenants = load_tenants(path)
    assert tenants.from_file and len(tenants) == 2
    alice = tenants.identify("key-alice")
    assert alice is not None and alice.name == "alice" and alice.weight == 2 and alice.max_queued == 100
    assert alice.rate is not None and alice.rate.amount == 600 and alice.rate.get_expiry() == 60
    assert tenants.identify("key-alice-2") is alice
    bob = tenants.identify("key-bob")
    assert bob is not None and (bob.weight, bob.max_queued, bob.rate) == (1.0, None, None)
    for wrong in ("key-alice ", "key-alic", "", None, "KEY-BOB"):
        assert tenants.identify(wrong) is None
    assert "key-alice" not in repr(tenants)  # only digests are kept


def test_without_a_file_there_is_one_default_tenant() -> None:
    tenants = load_tenants(None)
    assert not tenants.from_file and [t.name for t in tenants] == [DEFAULT_TENANT]
    assert tenants.identify("anything") is None
    assert tenants.get("gone").weight == 1.0  # a job of a tenant no longer in the file: the defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[tenants.a]\nkeys = ["k"]\n[tenants.b]\nkeys = ["k"]\n', "also a key of tenant 'a'"),
        ('[tenants.a]\nkeys = ["k"]\nweight = 0\n', "weight"),
        ('[tenants.a]\nkeys = ["k"]\nweight = -1\n', "weight"),
        ('[tenants.a]\nkeys = ["k"]\nrate = "lots"\n', "rate 'lots'"),
        ('[tenants.a]\nkeys = ["k"]\nmax_queud = 3\n', "max_queud"),
        ("[tenants.a]\nkeys = []\n", "keys"),
        ('[tenants."a b"]\nkeys = ["k"]\n', "tenant name"),
        ('[tenants.a]\nkeys = [" k"]\n', "blank or has spaces"),
        ("[other]\n", "unknown top-level"),
        ("", "no tenant"),
    ],
)
def test_an_invalid_file_is_refused_with_the_reason(text: str, message: str) -> None:
    import tomllib

    with pytest.raises(TenantsFileError, match=message) as info:
        parse_tenants(tomllib.loads(text))
    assert 'k"' not in str(info.value)  # the message names key numbers, not keys


def test_an_unreadable_or_malformed_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TenantsFileError, match="cannot be read"):
        load_tenants(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[tenants.a\n")
    with pytest.raises(TenantsFileError, match="not valid TOML"):
        load_tenants(bad)


def test_queue_names_per_tenant_and_without_a_file() -> None:
    assert queue_names("inference", "alice", per_tenant=True) == (
        "inference:alice:high",
        "inference:alice:normal",
        "inference:alice:low",
    )
    assert queue_names("inference", DEFAULT_TENANT, per_tenant=False) == (
        "inference:high",
        "inference",
        "inference:low",
    )
    with pytest.raises(ValueError):
        queue_name("inference", "a", "urgent", per_tenant=True)


# ---- the result cache's key (app/cache.py) ------------------------------------------------------------------------


def test_the_cache_key_changes_with_the_upload_the_parameters_the_weights_and_the_code() -> None:
    from dataclasses import replace

    from app.cache import cache_digest, model_digests
    from core.operations import OPERATIONS

    op = OPERATIONS["if_sdedit"]
    params = {"prompt": "a cat", "i_start": 10, "guidance": 7.0, "upscale": False, "seed": 1}
    infos = {"w1": {"models": {"if_stage1": {"digest": "sha256:aa;float16;cuda"}}}}
    base = cache_digest(op, params, {"image": b"png-1"}, infos)
    assert base is not None and base == cache_digest(op, dict(reversed(params.items())), {"image": b"png-1"}, infos)
    assert cache_digest(op, params, {"image": b"png-2"}, infos) != base
    assert cache_digest(op, params | {"i_start": 11}, {"image": b"png-1"}, infos) != base
    assert cache_digest(op, params | {"seed": 2}, {"image": b"png-1"}, infos) != base
    other = {"w1": {"models": {"if_stage1": {"digest": "sha256:bb;float16;cuda"}}}}
    assert cache_digest(op, params, {"image": b"png-1"}, other) != base
    assert cache_digest(replace(op, version=2), params, {"image": b"png-1"}, infos) != base
    # workers that disagree, or publish no digest, or lack stage II for an upscale: no key
    assert cache_digest(op, params, {"image": b"png-1"}, {**infos, **{"w2": other["w1"]}}) is None
    assert cache_digest(op, params, {"image": b"png-1"}, {"w1": {"models": {"if_stage1": {}}}}) is None
    assert cache_digest(op, params | {"upscale": True}, {"image": b"png-1"}, infos) is None
    assert model_digests({}, ("mnist_class",)) is None
