"""core/registry.py: components plug in by name, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from genre.core.registry import Registry, UnknownComponentError


@dataclass
class Widget:
    size: int = 1
    colour: str = "red"


@pytest.fixture
def registry() -> Registry[Widget]:
    reg: Registry[Widget] = Registry("widget", "shop.widgets[].name")

    @reg.register("small")
    def small(size: int = 1, colour: str = "red") -> Widget:
        return Widget(size, colour)

    reg.register("plain")(Widget)
    return reg


def test_create_with_params(registry: Registry[Widget]) -> None:
    assert registry.create("small") == Widget(1, "red")
    assert registry.create("small", size=3, colour="blue") == Widget(3, "blue")
    assert registry.create("plain", 7) == Widget(7, "red")  # positional args pass through
    assert registry.names() == ["plain", "small"]


def test_register_returns_factory_unchanged() -> None:
    reg: Registry[Widget] = Registry("widget", "w")
    assert reg.register("w")(Widget) is Widget


def test_duplicate_registration_rejected(registry: Registry[Widget]) -> None:
    with pytest.raises(ValueError, match=r"widget 'small' is already registered"):
        registry.register("small")(Widget)
    assert registry.create("small") == Widget(1, "red")  # the original stays


def test_unknown_name_lists_names_and_config_key(registry: Registry[Widget]) -> None:
    with pytest.raises(UnknownComponentError) as info:
        registry.create("large")
    msg = str(info.value)
    assert "unknown widget 'large'" in msg
    assert "shop.widgets[].name" in msg
    assert "valid names: plain, small" in msg
    assert isinstance(info.value, LookupError)


def test_bad_params_name_the_component(registry: Registry[Widget]) -> None:
    with pytest.raises(UnknownComponentError) as info:
        registry.create("small", weight=3)
    msg = str(info.value)
    assert "bad parameters" in msg
    assert "widget 'small'" in msg
    assert "shop.widgets[].name" in msg
    assert "weight" in msg
    assert isinstance(info.value.__cause__, TypeError)


def test_registries_are_independent() -> None:
    a: Registry[Widget] = Registry("a", "a")
    b: Registry[Widget] = Registry("b", "b")
    a.register("x")(Widget)
    b.register("x")(Widget)  # same name in another role is fine
    assert a.names() == b.names() == ["x"]
    assert Registry("empty", "e").names() == []
    with pytest.raises(UnknownComponentError, match=r"unknown empty 'x' at e"):
        Registry("empty", "e").create("x")
