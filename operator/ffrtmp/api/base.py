"""Base model: camelCase on the wire, unknown fields refused."""

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict


def api_config(*, json_schema_extra: JsonDict | None = None, extra: str = "forbid") -> ConfigDict:
    """camelCase JSON, snake_case Python, no unknown fields; optional extra schema (CEL rules)."""
    config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid" if extra == "forbid" else "ignore",
        use_enum_values=True,
    )
    if json_schema_extra is not None:
        config["json_schema_extra"] = json_schema_extra
    return config


class ApiModel(BaseModel):
    """A part of a custom resource: camelCase JSON, snake_case Python, no unknown fields."""

    model_config = api_config()

    def to_api(self) -> dict[str, Any]:
        """The JSON the API server stores: aliases, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def rules(*pairs: tuple[str, str]) -> JsonDict:
    """CEL rules for `json_schema_extra`: (rule, message that says what must hold)."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]}
