"""Components plug in by name: a registry per role, keyed by the name used in YAML."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(LookupError):
    """A YAML file named a component that is not registered."""


class Registry(Generic[T]):
    """Maps names to factories for one role (candidate source, scorer, filter, ...)."""

    def __init__(self, role: str, config_key: str) -> None:
        self.role = role
        self.config_key = config_key
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``factory`` under ``name``."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.role} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def create(self, name: str, /, *args: Any, **params: Any) -> T:
        """Build the component ``name``; unknown names or bad params raise with the fix."""
        try:
            factory = self._factories[name]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {self.role} {name!r} at {self.config_key}; "
                f"valid names: {', '.join(self.names())}"
            ) from None
        try:
            inspect.signature(factory).bind(*args, **params)
        except TypeError as exc:
            raise UnknownComponentError(
                f"bad parameters for {self.role} {name!r} at {self.config_key}: {exc}"
            ) from exc
        return factory(*args, **params)
