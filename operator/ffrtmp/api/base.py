"""Base model: camelCase on the wire; unknown fields refused by `model_validate` (tests, CRD
generation) and ignored by `from_api` (what the operator and workers read from the API server).

Version skew: a worker or operator one release behind may read an object that carries a field a
newer CRD added. Refusing it would fail the job (InvalidSpec) for nothing; it is ignored instead, as
client-go's decoders do. The CRD schemas are the same either way (the API server prunes or refuses
unknown fields itself).
"""

from typing import Any, Self

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict, JsonValue


def api_config(*, json_schema_extra: JsonDict | None = None, extra: str = "forbid") -> ConfigDict:
    """camelCase JSON, snake_case Python, unknown fields refused (see `ApiModel.from_api` for runtime reads);
    optional extra schema (CEL rules)."""
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
    """A part of a custom resource: camelCase JSON, snake_case Python; strict `model_validate`, lenient `from_api`."""

    model_config = api_config()

    @classmethod
    def from_api(cls, data: Any) -> Self:
        """Parse what the API server stored, ignoring fields this version does not know (version skew)."""
        return cls.model_validate(data, extra="ignore")

    @classmethod
    def from_api_json(cls, data: str | bytes) -> Self:
        """`from_api` for JSON text."""
        return cls.model_validate_json(data, extra="ignore")

    def to_api(self) -> dict[str, Any]:
        """The JSON the API server stores: aliases, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def rules(*pairs: tuple[str, str] | tuple[str, str, str]) -> JsonDict:
    """CEL rules for `json_schema_extra`: (rule, message that says what must hold[, messageExpression:
    a CEL string expression naming the values, which the API server shows instead of the message])."""
    validations: list[JsonValue] = []
    for rule, message, *expression in pairs:
        entry: JsonDict = {"rule": rule, "message": message}
        if expression:
            entry["messageExpression"] = expression[0]
        validations.append(entry)
    return {"x-kubernetes-validations": validations}
