"""The models' trusted constructors: the same models as pydantic's own."""

from __future__ import annotations

from uuid import uuid4

import pytest
from pydantic import BaseModel

from scrapy_pharox import Lease, LeaseStatus, OutcomeReport, Proxy, ProxyCredentials
from scrapy_pharox.models import build_trusted, snapshot, utc_now

TRUSTED_MODELS = (Lease, OutcomeReport, Proxy, ProxyCredentials)


@pytest.mark.parametrize("model", TRUSTED_MODELS, ids=lambda m: m.__name__)
def test_models_built_trusted_have_no_private_attributes_or_post_init(
    model: type[BaseModel],
) -> None:
    assert model.__private_attributes__ == {}
    assert model.__pydantic_post_init__ is None
    assert model.model_config.get("extra") != "allow"


def test_build_trusted_equals_model_construct_for_every_field() -> None:
    proxy = Proxy(host="127.0.0.1", port=3128, pool_id=uuid4())
    values = {
        "id": uuid4(),
        "proxy_id": proxy.id,
        "consumer_id": uuid4(),
        "pool_id": proxy.pool_id,
        "pool_name": "pool",
        "status": LeaseStatus.ACTIVE,
        "acquired_at": utc_now(),
        "expires_at": utc_now(),
        "released_at": None,
        "proxy": proxy,
    }
    trusted = build_trusted(Lease, dict(values))
    constructed = Lease.model_construct(**values)
    assert trusted == constructed
    assert trusted.model_fields_set == constructed.model_fields_set
    assert trusted.model_dump() == constructed.model_dump()


def test_a_snapshot_does_not_follow_later_changes_of_the_original() -> None:
    proxy = Proxy(host="127.0.0.1", port=3128, pool_id=uuid4())
    copy = snapshot(proxy)
    proxy.current_leases = 1
    assert copy == proxy.model_copy(update={"current_leases": 0})
    assert copy.current_leases == 0
