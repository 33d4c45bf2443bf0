"""Strict twins of the schema Structs: the same fields, but unknown fields refused.

Unknown fields are allowed and kept (stored in `data` as sent), but msgspec skips them
without reading their numbers, so such an event needs a slower check of every value
(`_validate._raise_if_unstorable`). Decoding with the strict twin first tells, at no cost
for the usual event, whether that check is needed. A twin subclasses its Struct, so
`isinstance` and `__post_init__` carry over.
"""

import types
import typing
from typing import Any

import msgspec

_twins: dict[type[msgspec.Struct], type[msgspec.Struct]] = {}


def strict_twin(struct: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """`struct` with `forbid_unknown_fields`, down through every nested Struct field."""
    twin = _twins.get(struct)
    if twin is not None:
        return twin
    annotations = {}
    for field in msgspec.structs.fields(struct):
        strict = _strict_type(field.type)
        if strict is not field.type:
            annotations[field.name] = strict

    def body(namespace: dict[str, Any]) -> None:
        namespace["__annotations__"] = annotations
        namespace["__module__"] = struct.__module__
        namespace["__doc__"] = f"{struct.__name__}, refusing unknown fields."

    twin = types.new_class(struct.__name__, (struct,), {"forbid_unknown_fields": True}, body)
    _twins[struct] = twin
    return twin


def _strict_type(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return strict_twin(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        strict = tuple(_strict_type(a) for a in args)
        return tp if strict == args else typing.Union[strict]  # noqa: UP007
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(tp)
        strict_inner = _strict_type(inner)
        return tp if strict_inner is inner else typing.Annotated[(strict_inner, *extras)]
    return tp


def is_unknown_field(exc: msgspec.ValidationError) -> bool:
    return str(exc).startswith("Object contains unknown field")
