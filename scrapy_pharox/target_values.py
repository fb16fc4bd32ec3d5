"""Selectors and filters read from a setting, a spider attribute or a request's
meta: errors name where the bad value came from."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from .exceptions import PharoxSettingError
from .models import ProxyFilters, SelectorStrategy


def parse_selector(source: str, value: Any) -> SelectorStrategy:
    """A SelectorStrategy from its value; ``source`` names where it came from."""
    if isinstance(value, SelectorStrategy):
        return value
    try:
        return SelectorStrategy(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(strategy.value for strategy in SelectorStrategy)
        raise PharoxSettingError(
            f"{source}: unknown selector {value!r}, use one of {choices}"
        ) from None


def parse_filters(source: str, value: Any) -> ProxyFilters | None:
    """ProxyFilters from a dict, a JSON object string or a ProxyFilters."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, ProxyFilters):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PharoxSettingError(
                f"{source}: filters must be a dict or a JSON object, got {value!r} "
                f"({exc.msg})"
            ) from None
    if not isinstance(value, dict):
        raise PharoxSettingError(f"{source}: filters must be a dict, got {value!r}")
    try:
        return ProxyFilters.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'filters'}: "
            f"{error['msg']}"
            for error in exc.errors()
        )
        raise PharoxSettingError(f"{source}: invalid filters {problems}") from None
