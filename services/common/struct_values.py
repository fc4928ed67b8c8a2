"""google.protobuf.Struct to Python, with a clear error for what JSON cannot hold."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from services.common.errors import InvalidArgument


def struct_to_dict(struct: struct_pb2.Struct, field: str) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(struct)
    except ValueError as error:
        # A Struct can carry NaN and infinities; JSON, and so metadata, cannot.
        raise InvalidArgument(
            f"{field} must hold JSON values: numbers must be finite (no NaN or infinity)", field=field
        ) from error
