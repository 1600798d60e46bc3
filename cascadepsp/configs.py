"""The one JSON round trip of every configuration dataclass in both packages (model, training, augmentation).

Configurations are stored in weight-file headers and run folders as JSON, which turns tuples into lists and
nested dataclasses into dicts; :meth:`JsonConfig.from_dict` turns them back and refuses unknown fields.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for dataclasses: ``to_dict`` / ``to_json`` / ``from_dict`` with tuples and nested configs restored."""

    renamed_fields: ClassVar[dict[str, str]] = {}  # old field name -> new, so files written before a rename load

    @classmethod
    def upgrade_keys(cls, d: dict[str, Any]) -> dict[str, Any]:
        """``d`` with fields written under an old name (``renamed_fields``) under their new name."""
        return {cls.renamed_fields.get(k, k): v for k, v in d.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (nested configs as dicts, other non-JSON values as strings)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Rebuild from :meth:`to_dict` output; unknown fields are a ``ValueError`` naming them."""
        d = cls.upgrade_keys(d)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _restore(hints[k], v) for k, v in d.items()})


def _restore(hint: Any, value: Any) -> Any:
    """``value`` from JSON back to the type ``hint`` names: nested configs and tuples (also inside optionals)."""
    if isinstance(value, dict) and isinstance(hint, type) and issubclass(hint, JsonConfig):
        return hint.from_dict(value)
    if isinstance(value, list):
        origins = {typing.get_origin(h) or h for h in (typing.get_args(hint) or (hint,))} | {typing.get_origin(hint)}
        if tuple in origins:
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value
