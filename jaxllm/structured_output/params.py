"""`StructuredOutputsParams`: the one constraint (JSON schema, regex, choice, EBNF grammar, any JSON
object, structural tag) a request's output must follow, with vLLM's field names and checks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass
class StructuredOutputsParams:
    """Exactly one of `json` (a JSON schema as dict or string, or a Pydantic model class), `regex`,
    `choice` (a list of strings), `grammar` (EBNF / GBNF), `json_object` (any JSON object) or
    `structural_tag` (xgrammar's structural tag, as JSON)."""

    json: str | dict | None = None  # a Pydantic model class is turned into its schema
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.json, type) and hasattr(self.json, "model_json_schema"):
            self.json = self.json.model_json_schema()  # a Pydantic model class
        if self.json_object is False:
            self.json_object = None
        given = [k for k in _KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                "You can only use one kind of structured outputs constraint but multiple are specified: "
                f"{', '.join(given)}."
            )
        if not given:
            raise ValueError(
                "You must use one kind of structured outputs constraint but none are specified "
                f"(one of {', '.join(_KINDS)})."
            )
        self._check_types()

    def _check_types(self) -> None:
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (dict or str), got "
                             f"{type(self.json).__name__}.")
        if self.choice is not None:
            if not isinstance(self.choice, (list, tuple)) or not self.choice or \
                    not all(isinstance(c, str) for c in self.choice):
                raise ValueError("structured_outputs.choice must be a non-empty list of strings.")
            self.choice = list(self.choice)
        for name in ("regex", "grammar", "structural_tag"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"structured_outputs.{name} must be a string, got {type(value).__name__}.")

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) is not None)

    def cache_key(self) -> tuple:
        """Equal for two parameter sets that compile to the same grammar."""
        spec = getattr(self, self.kind)
        if self.kind == "json" and isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except ValueError:
                pass  # not JSON: compiling it reports the error
        if isinstance(spec, dict):
            spec = json.dumps(spec, sort_keys=True)
        elif isinstance(spec, list):
            spec = tuple(spec)
        return (self.kind, spec, self.disable_any_whitespace, self.disable_additional_properties)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructuredOutputsParams:
        """From a request body's `structured_outputs` object; unknown keys are a ValueError."""
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - allowed - {"backend"})
        if unknown:
            raise ValueError(f"Unknown structured_outputs field(s): {', '.join(unknown)}.")
        return cls(**{k: v for k, v in data.items() if k in allowed})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}


@dataclass
class GuidedDecodingParams(StructuredOutputsParams):
    """The older name (`SamplingParams(guided_decoding=...)`); `backend` is accepted and only xgrammar
    is used."""

    backend: str | None = None
