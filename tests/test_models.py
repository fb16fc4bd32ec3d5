"""The models' trusted constructors (the same models as pydantic's own), and their
pickles."""

from __future__ import annotations

import copyreg
import io
import pickle
import re
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel

from scrapy_pharox import (
    CooldownPolicy,
    InvalidArgumentError,
    Lease,
    LeaseStatus,
    OutcomeReport,
    PharoxError,
    Proxy,
    ProxyCredentials,
    ProxyProtocol,
    ProxySession,
    models,
)
from scrapy_pharox.models import build_trusted, snapshot, utc_now

TRUSTED_MODELS = (Lease, OutcomeReport, Proxy, ProxyCredentials, ProxySession)


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


class PicklerOfBefore(pickle.Pickler):
    """Pickles a Lease as pydantic does by default, as scrapy-pharox did before
    leases left their credentials out of pickles."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Lease:
            return (copyreg.__newobj__, (Lease,), obj.__getstate__())
        return NotImplemented


def pickled_as_before(lease: Lease) -> bytes:
    written = io.BytesIO()
    PicklerOfBefore(written, protocol=0).dump(lease)
    return written.getvalue()


def test_a_pickle_naming_the_classes_in_scrapy_pharox_models_still_loads() -> None:
    # Requests queued in a JOBDIR before models.py became a package carry leases
    # pickled as scrapy_pharox.models.Lease, .Proxy, ...: that path must resolve.
    proxy = Proxy(
        host="::1",
        port=3128,
        protocol=ProxyProtocol.SOCKS5,
        pool_id=uuid4(),
        credentials=ProxyCredentials(user="user", password="secret"),
    )
    lease = Lease(
        proxy_id=proxy.id,
        consumer_id=uuid4(),
        expires_at=utc_now() + timedelta(seconds=30),
        proxy=proxy,
    )
    written, renamed = re.subn(
        rb"^(\(?c)scrapy_pharox\.models\.\w+$",
        rb"\1scrapy_pharox.models",
        pickled_as_before(lease),
        flags=re.MULTILINE,
    )
    assert renamed >= 3
    assert b"scrapy_pharox.models." not in written
    assert pickle.loads(written) == lease


def test_every_class_of_the_models_is_found_at_scrapy_pharox_models() -> None:
    # What unpickling does with a class reference written before the split.
    unpickler = pickle.Unpickler(io.BytesIO())
    classes = [
        value
        for name in models.__all__
        if isinstance(value := getattr(models, name), type)
    ]
    assert len(classes) == 19
    for cls in classes:
        assert unpickler.find_class("scrapy_pharox.models", cls.__qualname__) is cls


@pytest.mark.parametrize(
    "values",
    [{"base_seconds": 1e12}, {"max_seconds": float("inf")}, {"base_seconds": 0}],
)
def test_a_cooldown_policy_out_of_bounds_is_an_argument_error_naming_the_value(
    values: dict[str, float],
) -> None:
    with pytest.raises(InvalidArgumentError) as bad:
        CooldownPolicy(**values)
    assert isinstance(bad.value, PharoxError) and isinstance(bad.value, ValueError)
    ((name, value),) = values.items()
    assert name in str(bad.value) and repr(value) in str(bad.value)


def test_a_pickled_lease_leaves_its_proxy_s_credentials_behind() -> None:
    proxy = Proxy.from_url("http://alice:s3cr3t-pw@127.0.0.1:3128", pool_id=uuid4())
    lease = Lease(
        proxy_id=proxy.id,
        consumer_id=uuid4(),
        expires_at=utc_now() + timedelta(seconds=30),
        proxy=proxy,
    )
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        written = pickle.dumps(lease, protocol=protocol)
        assert b"s3cr3t-pw" not in written
        back = pickle.loads(written)
        assert back.proxy is not None and back.proxy.credentials is None
        assert back.model_dump(exclude={"proxy"}) == lease.model_dump(exclude={"proxy"})
        assert back.proxy.address == proxy.address
    assert lease.proxy is not None and lease.proxy.credentials is not None
