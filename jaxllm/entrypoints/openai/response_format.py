"""A request's output constraint: `response_format`, `structured_outputs` and the older `guided_*`
fields, merged into one `StructuredOutputsParams` as vLLM reads them (a bad one is a 400)."""

from __future__ import annotations

import json
from typing import Any

from jaxllm.entrypoints.openai.errors import OpenAIError
from jaxllm.structured_output.params import StructuredOutputsParams

_GUIDED = (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
           ("guided_grammar", "grammar"))


def structured_outputs_from_request(request: Any) -> StructuredOutputsParams | None:
    """None when the request does not constrain its output."""
    spec: dict[str, Any] = dict(request.structured_outputs or {})
    param = "structured_outputs"
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        param = "response_format"
        spec.update(_from_response_format(fmt))
    for field, key in _GUIDED:
        value = getattr(request, field, None)
        if value is not None:
            spec[key], param = value, field
    if not spec:
        return None
    try:
        return StructuredOutputsParams.from_dict(spec)
    except (TypeError, ValueError) as err:
        raise OpenAIError(str(err), param=param) from err


def _from_response_format(fmt: Any) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"json_object": True}
    if fmt.type == "json_schema":
        body = fmt.json_schema or {}
        schema = body.get("schema", body.get("json_schema"))
        if not isinstance(schema, (dict, str)):
            raise OpenAIError("response_format.json_schema must carry the JSON schema in `schema`.",
                              param="response_format")
        return {"json": schema}
    # structural_tag: the whole object is xgrammar's structural tag
    return {"structural_tag": json.dumps(fmt.model_dump(exclude_none=True))}
