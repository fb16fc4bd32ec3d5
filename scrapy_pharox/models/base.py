"""What every model module shares: the UTC clock of their timestamp defaults,
building models from known-good values without validation, and lease ids."""

from __future__ import annotations

import os
import random
from datetime import datetime, timezone
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


# Seeded from os.urandom, and again in a forked child, so that the processes of
# a fleet draw independent ids. A generator of its own: a spider that seeds the
# random module (for repeatable choices) does not repeat lease ids across runs.
_ids = random.Random()
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_ids.seed)


def new_id() -> UUID:
    """A new random (version 4) UUID for a lease, in half the CPU time of
    ``uuid4()`` (1.3 us against 2.7 us here): no os.urandom system call per
    lease. Lease ids name a lease, they guard nothing: a fast generator's bits
    will do."""
    return UUID(int=_ids.getrandbits(128), version=4)


Model = TypeVar("Model", bound=BaseModel)

_object_setattr = object.__setattr__


def build_trusted(cls: type[Model], values: dict[str, Any]) -> Model:
    """``cls.model_construct(**values)`` for known-good ``values`` that set every
    field: what the storage adapters build for each lease, at a fifth of the
    cost (``model_construct`` looks up each field's aliases and default).

    Only for the models of this package: none has private attributes, a post-init
    hook or extra fields (tests/test_models.py checks).
    """
    model = cls.__new__(cls)
    _object_setattr(model, "__dict__", values)
    _object_setattr(model, "__pydantic_fields_set__", set(values))
    _object_setattr(model, "__pydantic_extra__", None)
    _object_setattr(model, "__pydantic_private__", None)
    return model


def snapshot(model: Model) -> Model:
    """A shallow copy, like ``model.model_copy()``, built as ``build_trusted`` does."""
    return build_trusted(type(model), dict(model.__dict__))
