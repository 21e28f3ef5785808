"""Base model: camelCase on the wire, unknown fields refused."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """A part of a custom resource: camelCase JSON, snake_case Python, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_api(self) -> dict[str, object]:
        """The JSON the API server stores: aliases, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def rules(*pairs: tuple[str, str]) -> dict[str, object]:
    """CEL rules for `json_schema_extra`: (rule, message that says what must hold)."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]}
