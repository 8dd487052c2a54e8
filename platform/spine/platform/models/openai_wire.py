"""The OpenAI chat-completions wire format shared by the gateway and the agents.

The request model (:class:`ChatCompletionRequest`) and the answer (:func:`completion_body`,
:func:`usage_body`); a request that breaks the rules is a
:class:`~spine.platform.models.openai_errors.GatewayError` naming the parameter. The request is checked
by OpenAI's rules (strict types, ranges, each message's role rules and content parts) so that
no malformed call reaches a model. The gateway speaks it over HTTP; the ``completion`` agent
runs batch lines with it. Streaming frames stay with the gateway
(:mod:`spine.platform.app.api._openai`).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from spine.platform.inputs import (
    MAX_JSON_DEPTH,
    InvalidInput,
    check_json,
    place,
    where_in,
)
from spine.platform.models import ChatRequest, Completion
from spine.platform.models.openai_errors import GatewayError, json_body

__all__ = [
    "AUTO",
    "IGNORED",
    "PASSED_THROUGH",
    "ChatCompletionRequest",
    "completion_body",
    "function_call_of",
    "new_completion_id",
    "usage_body",
]

AUTO = "auto"

# OpenAI request fields forwarded to the model as they are, unchecked (those the gateway checks,
# such as the penalties and logprobs, are fields of ChatCompletionRequest).
PASSED_THROUGH = frozenset(
    {
        "reasoning_effort",
        "modalities",
        "prediction",
        "audio",
        "web_search_options",
        "verbosity",
    }
)
# OpenAI fields about OpenAI's own bookkeeping: accepted, not forwarded.
IGNORED = frozenset({"metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})

# -- the request -------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


StrictFloat = Annotated[float, Field(strict=True)]
"""A JSON number: an integer or a float, never a boolean or a numeric string."""
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
"""A token's id in the model's tokenizer, as a JSON object key ("50256")."""
TokenBias = Annotated[StrictInt, Field(ge=-100, le=100)]


class TextPart(_Open):
    """Text in a content array."""

    type: Literal["text"]
    text: StrictStr


class ImageUrl(_Open):
    """Where an image is: an ``https`` URL or a ``data:`` URL."""

    url: StrictStr = Field(min_length=1)


class ImagePart(_Open):
    """An image in a content array (user messages; models with the ``vision`` capability)."""

    type: Literal["image_url"]
    image_url: ImageUrl


class AudioPart(_Open):
    """Audio in a content array (user messages)."""

    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(_Open):
    """A file in a content array (user messages)."""

    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Open):
    """A refusal in an assistant message's content array."""

    type: Literal["refusal"]
    refusal: StrictStr


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")
]
_PARTS: TypeAdapter[list[ContentPart]] = TypeAdapter(list[ContentPart])
# The part types each role may send, as OpenAI accepts them.
_PART_TYPES: dict[str, frozenset[str]] = {
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
}
_TEXT_ONLY = frozenset({"text"})


class FunctionCall(_Open):
    """The function an assistant's tool call names, and its arguments as JSON text."""

    name: StrictStr
    arguments: StrictStr


class ToolCallMessage(_Open):
    """A tool call in an assistant message of the conversation so far."""

    id: StrictStr = Field(min_length=1)
    type: Literal["function"]
    function: FunctionCall


class Message(_Open):
    """One chat message, checked by OpenAI's rules for its role; other fields pass on.

    ``system``, ``developer`` and ``user`` messages need content; an ``assistant`` message
    needs content or ``tool_calls`` (content may be null only with them); a ``tool``
    message needs ``tool_call_id`` and content; a ``function`` message needs ``name``.
    Content is a string or a non-empty array of parts of the types the role may send.
    """

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallMessage] | None = None
    tool_call_id: StrictStr | None = None
    function_call: FunctionCall | None = None  # the deprecated form of one tool call

    @field_validator("content", mode="before")
    @classmethod
    def _string_or_parts(cls, value: object) -> object:
        # Checked here, not by the union: its errors would name each branch ("str", "list[...]").
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise PydanticCustomError(
                "content_type", "expected a string or an array of content parts"
            )
        if not value:
            raise PydanticCustomError("content_empty", "an array of content parts may not be empty")
        try:
            return _PARTS.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = first["loc"]  # (index, the part's type, its field, ...)
            raise _message_error(
                ".".join(str(p) for p in (loc[0], *loc[2:])), first["msg"]
            ) from None

    @model_validator(mode="after")
    def _follows_its_roles_rules(self) -> Message:
        role, content = self.role, self.content
        if isinstance(content, list):
            allowed = _PART_TYPES.get(role, _TEXT_ONLY)
            for index, part in enumerate(content):
                if part.type not in allowed:
                    raise _message_error(
                        f"content.{index}",
                        f"a '{role}' message cannot hold '{part.type}' parts "
                        f"(it may hold {', '.join(sorted(allowed))})",
                    )
        if role == "assistant":
            if content is None and not self.tool_calls and self.function_call is None:
                raise _message_error(
                    "content", "an 'assistant' message needs content or tool_calls"
                )
        elif role == "function":
            if not self.name:
                raise _message_error("name", "a 'function' message needs a name")
        elif content is None:
            raise _message_error("content", f"a '{role}' message needs content")
        if role == "tool" and not self.tool_call_id:
            raise _message_error("tool_call_id", "a 'tool' message needs a tool_call_id")
        return self


def _message_error(field: str, message: str) -> PydanticCustomError:
    """Return a message's error naming its ``field`` (added to where the error is by ``_invalid``)."""
    return PydanticCustomError("invalid_message", message, {"field": field})


class FunctionDefinition(_Open):
    """A function a tool call may name."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class FunctionChoice(BaseModel):
    """The one function a deprecated ``function_call`` forces."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr


class Tool(BaseModel):
    """A tool the model may call."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class TextFormat(BaseModel):
    """Plain text answers."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    """Any JSON object."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


class JsonSchema(BaseModel):
    """The schema a ``json_schema`` answer follows."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class JsonSchemaFormat(BaseModel):
    """JSON following a schema."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class StreamOptions(BaseModel):
    """Options of a streamed answer."""

    include_usage: StrictBool = False


class ChatCompletionRequest(_Open):
    """A ``POST /v1/chat/completions`` body.

    ``model: "auto"`` lets the router choose; ``spine_strategy`` (or the ``X-Spine-Strategy``
    header) names the routing strategy.
    """

    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: StrictFloat | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | None = Field(None, ge=0, le=1)
    frequency_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    presence_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    parallel_tool_calls: StrictBool | None = None
    stop: StrictStr | list[StrictStr] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    functions: list[FunctionDefinition] | None = Field(None, min_length=1, max_length=128)
    function_call: Literal["none", "auto"] | FunctionChoice | None = None
    response_format: ResponseFormat | None = None
    seed: StrictInt | None = None
    logit_bias: dict[TokenId, TokenBias] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    n: StrictInt | None = Field(None, ge=1)
    spine_strategy: StrictStr | None = None
    spine_cost_weight: StrictFloat | None = Field(
        None, ge=0, le=1, description="The learned strategy's knob: quality given up to save cost."
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("function_call", mode="before")
    @classmethod
    def _function_choice(cls, value: object) -> object:
        # Checked here, not by the union: its errors would name each branch.
        if value is None or value == "none" or value == "auto":
            return value
        if isinstance(value, dict) and set(value) == {"name"} and isinstance(value["name"], str):
            return FunctionChoice(name=value["name"])
        raise PydanticCustomError(
            "function_choice", 'expected "none", "auto" or {"name": "<function name>"}'
        )

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return value

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and self.logprobs is not True:
            raise PydanticCustomError(
                "top_logprobs_without_logprobs",
                "top_logprobs needs logprobs set to true",
                {"field": "top_logprobs"},
            )
        return self

    @model_validator(mode="after")
    def _tool_settings_need_tools(self) -> ChatCompletionRequest:
        # OpenAI refuses them without tools; passed on, a provider would ignore them silently.
        for name in ("tool_choice", "parallel_tool_calls"):
            if getattr(self, name) is not None and not self.tools:
                raise PydanticCustomError(
                    "tool_setting_without_tools",
                    "{field} is only allowed when tools are specified",
                    {"field": name},
                )
        return self

    @model_validator(mode="after")
    def _functions_alone(self) -> ChatCompletionRequest:
        # The deprecated pair is served as tools: mixed with tools, the answer's form is unclear.
        if self.functions and self.tools:
            raise PydanticCustomError(
                "functions_with_tools",
                "give tools or functions (deprecated), not both",
                {"field": "functions"},
            )
        if self.function_call is not None and not self.functions:
            raise PydanticCustomError(
                "function_call_without_functions",
                "function_call is only allowed when functions are specified",
                {"field": "function_call"},
            )
        choice = self.function_call
        names = {f.name for f in self.functions or ()}
        if isinstance(choice, FunctionChoice) and choice.name not in names:
            raise PydanticCustomError(
                "unknown_function",
                "function_call names '{name}', which is not among the functions",
                {"field": "function_call.name", "name": choice.name},
            )
        return self

    @classmethod
    def parse(
        cls, raw: bytes, *, max_depth: int = MAX_JSON_DEPTH, checked: Any = None
    ) -> ChatCompletionRequest:
        """Read and validate a body; problems are 400s naming the parameter.

        ``checked`` is the body decoded and found storable already (by the API's input guard),
        if it was: then ``raw`` is neither decoded nor checked again.
        """
        body = json_body(raw, checked=checked, max_depth=max_depth)
        return cls.from_body(body, max_depth=max_depth, checked=True)

    @classmethod
    def from_body(
        cls, body: object, *, max_depth: int = MAX_JSON_DEPTH, checked: bool = False
    ) -> ChatCompletionRequest:
        """Validate a decoded body; problems are 400s naming the parameter.

        Values the platform cannot store or send on (see :mod:`spine.platform.inputs`) are
        refused too, unless the body was ``checked`` for them already: the messages reach the
        response cache, the journal and the provider.
        """
        if not isinstance(body, dict):
            raise GatewayError(400, "the body must be a JSON object")
        try:
            if not checked:
                check_json(body, max_depth=max_depth)
        except InvalidInput as exc:
            raise GatewayError.unstorable(exc) from None
        try:
            request = cls.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        unknown = request.unknown_parameters()
        if unknown:
            raise GatewayError.unknown_parameters(unknown)
        return request

    def unknown_parameters(self) -> list[str]:
        """Name the fields given that are neither ours, passed on, nor ignored, sorted."""
        return sorted(set(self.model_extra or {}) - PASSED_THROUGH - IGNORED)

    @property
    def routed_model(self) -> str | None:
        """The model asked for, None when the router should choose."""
        return None if self.model == AUTO else self.model

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def uses_functions(self) -> bool:
        """Whether the caller speaks the deprecated ``functions`` API: the answer's call is then
        a ``function_call``, not ``tool_calls``."""
        return bool(self.functions)

    def messages_out(self) -> list[dict[str, Any]]:
        """The messages as the model should see them (deprecated function calls as tool calls)."""
        messages = [m.model_dump(exclude_none=True) for m in self.messages]
        if any(m.function_call is not None or m.role == "function" for m in self.messages):
            return _as_tool_messages(messages)
        return messages

    def params(self) -> dict[str, Any]:
        """The generation parameters for the router (None and ignored fields left out)."""
        params = self.model_dump(
            exclude_none=True,
            by_alias=True,
            exclude={
                "model",
                "messages",
                "stream",
                "stream_options",
                "n",
                "spine_strategy",
                "spine_cost_weight",
            },
        )
        for name in IGNORED:
            params.pop(name, None)
        if "max_completion_tokens" in params:
            params.setdefault("max_tokens", params.pop("max_completion_tokens"))
            params.pop("max_completion_tokens", None)
        if "functions" in params:
            params["tools"] = [{"type": "function", "function": f} for f in params.pop("functions")]
        choice = params.pop("function_call", None)
        if isinstance(choice, dict):
            params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif choice is not None:
            params["tool_choice"] = choice
        return params

    def to_request(self, *, strategy: str | None = None) -> ChatRequest:
        """The call for the router; ``strategy`` (a header's) wins over ``spine_strategy``."""
        return ChatRequest(
            messages=self.messages_out(),
            model=self.routed_model,
            strategy=strategy or self.spine_strategy or None,
            params=self.params(),
            cost_weight=self.spine_cost_weight,
        )


def _as_tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite the deprecated function calls and results as tool calls and tool messages.

    An assistant's ``function_call`` answered by the ``function`` message right after it
    becomes its one tool call, with an id made from its place (the same conversation gives the
    same ids: cache keys stay stable), and that message the ``tool`` message answering it. A
    call or a result without its pair is passed on as sent: as a tool call it would break the
    rule that every tool call is answered at once.
    """
    out: list[dict[str, Any]] = []
    waiting: str | None = None  # the id of the call the message just before made
    for index, message in enumerate(messages):
        call = message.get("function_call")
        if message["role"] == "function" and waiting is not None:
            content = message.get("content") or ""
            message = {"role": "tool", "tool_call_id": waiting, "content": content}
            waiting = None
        elif (
            message["role"] == "assistant"
            and call is not None
            and index + 1 < len(messages)
            and messages[index + 1]["role"] == "function"
        ):
            waiting = f"call_function_{index}"
            tool_call = {"id": waiting, "type": "function", "function": call}
            message = {k: v for k, v in message.items() if k != "function_call"}
            message["tool_calls"] = [*message.get("tool_calls", ()), tool_call]
        out.append(message)
    return out


_TAGGED_UNIONS = frozenset({"response_format"})
"""Parameters that are a union told apart by ``type``."""


def _invalid(exc: ValidationError) -> GatewayError:
    """Refuse a body with a 400 naming the top-level parameter; the message says where in it."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if len(loc) > 1 and loc[0] in _TAGGED_UNIONS:
        del loc[1]  # pydantic puts the union's tag (its ``type``) in the path: not a field
    inner = (first.get("ctx") or {}).get("field")
    if isinstance(inner, str):  # a check of a whole object that names the field at fault
        loc += inner.split(".")
    where = place(*where_in(loc)) if loc else "'body'"
    return GatewayError(400, f"invalid {where}: {first['msg']}", param=loc[0] if loc else None)


# -- the answer --------------------------------------------------------------------------------


def new_completion_id() -> tuple[str, int]:
    """Return a fresh ``chatcmpl-`` id and the creation time."""
    return f"chatcmpl-{uuid.uuid4().hex}", int(time.time())


def function_call_of(tool_call: dict[str, Any]) -> dict[str, Any]:
    """A tool call (or a streamed piece of one) in the deprecated ``function_call`` form."""
    function = tool_call.get("function") or {}
    return {k: function[k] for k in ("name", "arguments") if function.get(k) is not None}


def usage_body(input_tokens: int, output_tokens: int) -> dict[str, int]:
    """Return OpenAI's usage object."""
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def completion_body(
    answer: Completion, *, completion_id: str, created: int, functions: bool = False
) -> dict[str, Any]:
    """Render a routed answer as a ``chat.completion`` object; with ``functions`` (the caller
    sent the deprecated ``functions``) its call is a ``function_call``."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text if answer.text or not answer.tool_calls else None,
        "refusal": None,
    }
    finish = answer.finish_reason or ("tool_calls" if answer.tool_calls else "stop")
    if answer.tool_calls and functions:
        # One call: the deprecated form has no room for more (the first is the one asked for).
        message["function_call"] = function_call_of(answer.tool_calls[0])
        finish = "function_call" if finish == "tool_calls" else finish
    elif answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage_body(answer.input_tokens, answer.output_tokens),
        "system_fingerprint": None,
    }
