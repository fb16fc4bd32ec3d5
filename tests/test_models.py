"""The models' trusted constructors (the same models as pydantic's own), and their
pickles."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import random
import re
import subprocess
import sys
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
from scrapy_pharox.models import build_trusted, new_id, snapshot, utc_now

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


def test_lease_ids_are_random_version_4_uuids() -> None:
    ids = [new_id() for _ in range(1000)]
    assert {(lease_id.version, lease_id.variant) for lease_id in ids} == {
        (4, "specified in RFC 4122")
    }
    assert len(set(ids)) == len(ids)


def test_seeding_the_random_module_does_not_repeat_lease_ids() -> None:
    state = random.getstate()
    try:
        random.seed(7)
        first = new_id()
        random.seed(7)
        second = new_id()
    finally:
        random.setstate(state)  # as the other tests found it
    assert second != first


FORKED_IDS = """
import os
from scrapy_pharox.models import new_id
reading, writing = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(writing, b"".join(new_id().bytes for _ in range(4)))
    os._exit(0)
os.close(writing)
child = os.fdopen(reading, "rb").read()
os.waitpid(pid, 0)
parent = b"".join(new_id().bytes for _ in range(4))
print(len(child), child != parent)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_draws_other_lease_ids_than_its_parent() -> None:
    # In a process of its own: forking this one, with its threads, may deadlock.
    done = subprocess.run(
        [sys.executable, "-c", FORKED_IDS], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["64", "True"]


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
