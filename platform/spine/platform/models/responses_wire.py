"""OpenAI's Responses API (``POST /v1/responses``), served as a chat call through the router.

A Responses request is read by OpenAI's rules (:class:`ResponsesRequest`: strict types, ranges,
each input item's shape, a 400 naming the parameter) and turned into the chat-completions
request the gateway already serves (:meth:`ResponsesRequest.to_chat`): ``instructions`` become
a system message, ``input`` the conversation (a string is one user message; a
``function_call`` item an assistant's tool call, a ``function_call_output`` item the tool
message answering it), function ``tools``, ``tool_choice``, ``text.format`` (as
``response_format``), ``max_output_tokens``, ``temperature``, ``top_p`` and
``reasoning.effort`` the chat call's parameters. So routing, fallbacks, the cache, budgets,
rate limits and usage rows are the chat call's, word for word.

The answer is written as a ``response`` object (:func:`response_body`), streamed as OpenAI's
events (:class:`ResponseEvents`): ``response.created``, the output items with their text and
argument deltas, then ``response.completed`` (``response.incomplete`` when the answer was cut
at ``max_output_tokens``, ``response.failed`` when the model failed after its first token).

A kept response (``store``) is the route's and :mod:`spine.platform.responses`' business: here,
``previous_response_id``'s conversation is the chat messages :meth:`ResponsesRequest.to_chat` is
given, and :func:`answer_message` is the answer as the next turn's history. What needs OpenAI's
stored conversations, background runs or stored prompts (``conversation``, ``background``,
``prompt``) is refused naming the parameter. Tools are function tools only; OpenAI's hosted
tools (web search, file search, ...) are refused by name.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
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
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from spine.platform.errors import SpineError
from spine.platform.inputs import (
    InvalidInput,
    check_json,
    place,
    where_in,
)
from spine.platform.models.openai_errors import GatewayError, json_body
from spine.platform.models.openai_wire import (
    IGNORED,
    ChatCompletionRequest,
    StrictFloat,
)
from spine.platform.models.values import Completion, CompletionDelta

__all__ = [
    "Keep",
    "ResponseEvents",
    "ResponsesRequest",
    "answer_message",
    "new_response_id",
    "response_body",
    "token_usage",
]

# -- the request -------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Open):
    """Text in an input message (``output_text`` is the same, in an assistant's earlier turn)."""

    type: Literal["input_text", "output_text"]
    text: StrictStr


class InputImage(_Open):
    """An image in a user message: an ``https`` or ``data:`` URL."""

    type: Literal["input_image"]
    image_url: StrictStr = Field(min_length=1)
    detail: Literal["low", "high", "auto"] | None = None


class InputFile(_Open):
    """A file in a user message, its data inline (``file_data``) or by ``file_id``."""

    type: Literal["input_file"]
    file_data: StrictStr | None = None
    file_id: StrictStr | None = None
    filename: StrictStr | None = None


class Refusal(_Open):
    """An assistant's refusal in an earlier turn."""

    type: Literal["refusal"]
    refusal: StrictStr


Part = Annotated[InputText | InputImage | InputFile | Refusal, Field(discriminator="type")]
_PARTS: TypeAdapter[list[Part]] = TypeAdapter(list[Part])
# The part types each role may send; the others send text alone.
_ROLE_PARTS = {
    "user": frozenset({"input_text", "output_text", "input_image", "input_file"}),
    "assistant": frozenset({"input_text", "output_text", "refusal"}),
}
_TEXT_PARTS = frozenset({"input_text", "output_text"})


def _parts(value: object, allowed: frozenset[str], role: str) -> object:
    """A string, or a non-empty list of parts of the types ``role`` may send."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise PydanticCustomError(
            "content_type", "expected a string or a non-empty array of content parts"
        )
    try:
        parts = _PARTS.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]  # (index, the part's type, its field, ...)
        field = ".".join(str(p) for p in (loc[0], *loc[2:]))
        raise PydanticCustomError(
            "invalid_part", "{message}", {"field": field, "message": first["msg"]}
        ) from None
    for index, part in enumerate(parts):
        if part.type not in allowed:
            raise PydanticCustomError(
                "invalid_part",
                "'{part}' parts are not allowed in '{role}' content",
                {"field": str(index), "role": role, "part": part.type},
            )
    return parts


class MessageItem(_Open):
    """A message of the conversation (``type`` may be left out)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: StrictStr | list[Part]

    @field_validator("content", mode="before")
    @classmethod
    def _string_or_parts(cls, value: object, info: ValidationInfo) -> object:
        role = info.data.get("role", "user")
        return _parts(value, _ROLE_PARTS.get(role, _TEXT_PARTS), role)


class FunctionCallItem(_Open):
    """A function call the model made in an earlier turn."""

    type: Literal["function_call"]
    call_id: StrictStr = Field(min_length=1)
    name: StrictStr = Field(min_length=1)
    arguments: StrictStr


class FunctionCallOutputItem(_Open):
    """What a function call returned: the tool message answering ``call_id``."""

    type: Literal["function_call_output"]
    call_id: StrictStr = Field(min_length=1)
    output: StrictStr | list[Part]

    @field_validator("output", mode="before")
    @classmethod
    def _string_or_parts(cls, value: object) -> object:
        return _parts(value, _TEXT_PARTS, "function_call_output")


class ReasoningItem(_Open):
    """A reasoning model's reasoning of an earlier turn: not sent on (no provider takes it back
    through chat completions)."""

    type: Literal["reasoning"]


Item = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem,
    Field(discriminator="type"),
]
_TAGS = frozenset(
    {"message", "function_call", "function_call_output", "reasoning", "function"}
    | {"input_text", "output_text", "input_image", "input_file", "refusal"}
)
"""The types that tell the items, parts and tools apart."""


class FunctionTool(_Closed):
    """A function the model may call (the only kind of tool served here)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionChoice(_Closed):
    """The one function ``tool_choice`` forces."""

    type: Literal["function"]
    name: StrictStr


class TextFormat(_Closed):
    """``text.format``: plain text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class TextOptions(_Open):
    """``text``: the answer's format."""

    format: TextFormat | None = None


class Reasoning(_Open):
    """``reasoning``: its ``effort`` goes to models that take it (``reasoning_effort``)."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


# Accepted, not sent on: OpenAI's bookkeeping (the chat request's own, and the Responses API's),
# and what asks for output no provider gives back through the router (included reasoning
# contents, log probabilities: the answer's are empty lists).
_ACCEPTED = IGNORED | {
    "include",
    "stream_options",
    "truncation",
    "max_tool_calls",
    "prompt_cache_retention",
    "top_logprobs",
}
# OpenAI's stored conversations, background runs and stored prompts: refused when given.
_STATEFUL = ("conversation", "background", "prompt")


class ResponsesRequest(_Open):
    """A ``POST /v1/responses`` body (``model: "auto"`` lets the router choose, as for chat)."""

    model: StrictStr = Field(min_length=1)
    input: list[Item] = Field(min_length=1)
    instructions: StrictStr | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    temperature: StrictFloat | None = Field(None, ge=0, le=2)
    top_p: StrictFloat | None = Field(None, ge=0, le=1)
    max_output_tokens: StrictInt | None = Field(None, ge=1)
    stream: StrictBool = False
    text: TextOptions | None = None
    reasoning: Reasoning | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = Field(None, min_length=1, max_length=64)
    user: StrictStr | None = None
    spine_strategy: StrictStr | None = None
    spine_cost_weight: StrictFloat | None = Field(None, ge=0, le=1)

    @field_validator("input", mode="before")
    @classmethod
    def _text_or_items(cls, value: object) -> object:
        # A string is one user message; a message item may leave its type out.
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        if isinstance(value, list):
            return [
                {"type": "message", **item}
                if isinstance(item, dict) and "type" not in item
                else item
                for item in value
            ]
        raise PydanticCustomError("input_type", "expected a string or an array of input items")

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, value: object) -> object:
        # Said plainly: the union's own error would only say "Input should be 'function'".
        for index, tool in enumerate(value if isinstance(value, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind != "function":
                raise PydanticCustomError(
                    "hosted_tool",
                    "only function tools are served here, not '{kind}'",
                    {"field": f"{index}.type", "kind": kind},
                )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, value: object) -> object:
        if value is None or value in ("none", "auto", "required"):
            return value
        if isinstance(value, dict) and value.get("type") == "function":
            return value
        raise PydanticCustomError(
            "tool_choice",
            'expected "none", "auto", "required" or {"type": "function", "name": "<name>"}',
        )

    @classmethod
    def parse(cls, raw: bytes, *, checked: Any = None) -> ResponsesRequest:
        """Read and validate a body; problems are 400s naming the parameter.

        ``checked`` is the body decoded and found storable already (by the API's input
        guard), if it was.
        """
        body = json_body(raw, checked=checked)
        return cls.from_body(body, checked=True)

    @classmethod
    def from_body(cls, body: object, *, checked: bool = False) -> ResponsesRequest:
        """Validate a decoded body; problems are 400s naming the parameter."""
        if not isinstance(body, dict):
            raise GatewayError(400, "the body must be a JSON object")
        try:
            if not checked:
                check_json(body)
        except InvalidInput as exc:
            raise GatewayError.unstorable(exc) from None
        for name in _STATEFUL:
            if body.get(name) not in (None, False):
                raise GatewayError(
                    400,
                    f"'{name}' is not supported: continue a conversation with "
                    "'previous_response_id', or send all of it in 'input'",
                    param=name,
                    code="unsupported_parameter",
                )
        try:
            request = cls.model_validate(body)
        except ValidationError as exc:
            raise _refused(exc) from None
        unknown = sorted(set(request.model_extra or {}) - _ACCEPTED - set(_STATEFUL))
        if unknown:
            raise GatewayError.unknown_parameters(unknown)
        request._check_tools()
        return request

    def _check_tools(self) -> None:
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise GatewayError(
                400, "tool_choice is only allowed when tools are specified", param="tool_choice"
            )
        choice = self.tool_choice
        if isinstance(choice, FunctionChoice) and choice.name not in {
            tool.name for tool in self.tools or ()
        }:
            raise GatewayError(
                400,
                f"tool_choice names '{choice.name}', which is not among the tools",
                param="tool_choice",
            )
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema" and (not fmt.name or not fmt.schema_):
            raise GatewayError(
                400, "a json_schema format needs a 'name' and a 'schema'", param="text"
            )

    @property
    def stores(self) -> bool:
        """Whether the answer is kept (``store``, on unless set to false, as at OpenAI)."""
        return self.store is not False

    def to_chat(self, conversation: list[dict[str, Any]] | None = None) -> ChatCompletionRequest:
        """The chat-completions request this asks for, checked by that API's rules too.

        ``conversation`` is the chat messages to send after the instructions (the kept
        conversation of ``previous_response_id`` and this input); by default, this input's.
        """
        messages = self.input_messages() if conversation is None else conversation
        if self.instructions:
            messages = [{"role": "system", "content": self.instructions}, *messages]
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": tool.model_dump(exclude={"type"}, exclude_none=True),
                }
                for tool in self.tools
            ]
        if isinstance(self.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None and self.tools:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
            schema |= {"description": fmt.description, "strict": fmt.strict}
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {k: v for k, v in schema.items() if v is not None},
            }
        elif fmt is not None and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        if self.reasoning is not None and self.reasoning.effort is not None:
            body["reasoning_effort"] = self.reasoning.effort
        given = {
            "parallel_tool_calls": self.parallel_tool_calls if self.tools else None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_output_tokens,
            "user": self.user,
            "stream": self.stream or None,
            "spine_strategy": self.spine_strategy,
            "spine_cost_weight": self.spine_cost_weight,
        }
        body |= {k: v for k, v in given.items() if v is not None}
        try:
            return ChatCompletionRequest.from_body(body, checked=True)
        except GatewayError as exc:  # named in this API's terms
            param = _CHAT_PARAMS.get(str(exc.body.get("param")), exc.body.get("param"))
            raise GatewayError(400, str(exc).replace("'messages", "'input"), param=param) from None

    def input_messages(self) -> list[dict[str, Any]]:
        """The input as chat messages (the instructions are not among them)."""
        messages: list[dict[str, Any]] = []
        for item in self.input:
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": _chat_content(item.content)})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                before = messages[-1] if messages else None
                # Calls made together are one assistant turn, as chat completions has them.
                if before is not None and before["role"] == "assistant":
                    before.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif isinstance(item, FunctionCallOutputItem):
                content = _chat_content(item.output)
                if not isinstance(content, str):
                    content = "".join(part["text"] for part in content)
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": content})
        return messages

    def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """The input items as OpenAI lists them: each with an id (its own, else one made from its
        place), a message's text content as an ``input_text`` part."""
        key = response_id.removeprefix("resp_")
        items = []
        for index, item in enumerate(self.input):
            given = item.model_dump(mode="json", exclude_none=True, by_alias=True)
            if isinstance(item, MessageItem) and isinstance(item.content, str):
                kind = "output_text" if item.role == "assistant" else "input_text"
                given["content"] = [{"type": kind, "text": item.content}]
            items.append({"id": given.pop("id", None) or f"item_{key}_{index}", **given})
        return items

    def echo(self) -> dict[str, Any]:
        """The request's settings as a response object repeats them."""
        tool_choice: Any = self.tool_choice or "auto"
        if isinstance(tool_choice, FunctionChoice):
            tool_choice = tool_choice.model_dump()
        fmt = self.text.format if self.text is not None and self.text.format else None
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": True
            if self.parallel_tool_calls is None
            else self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "reasoning": {
                "effort": self.reasoning.effort if self.reasoning else None,
                "summary": None,
            },
            "store": self.stores,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "text": {
                "format": fmt.model_dump(by_alias=True, exclude_none=True)
                if fmt
                else {"type": "text"}
            },
            "tool_choice": tool_choice,
            "tools": [tool.model_dump(exclude_none=True) for tool in self.tools or ()],
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "truncation": "disabled",
            "user": self.user,
        }


# Chat parameters named in this API's terms.
_CHAT_PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text",
    "reasoning_effort": "reasoning",
}


def _chat_content(content: str | list[Any]) -> str | list[dict[str, Any]]:
    """Content in chat completions' terms: text parts as text, images by URL, files inline."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, InputText):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, InputImage):
            image = {"url": part.image_url} | ({"detail": part.detail} if part.detail else {})
            parts.append({"type": "image_url", "image_url": image})
        elif isinstance(part, InputFile):
            file = part.model_dump(include={"file_data", "file_id", "filename"}, exclude_none=True)
            parts.append({"type": "file", "file": file})
        elif isinstance(part, Refusal):
            parts.append({"type": "refusal", "refusal": part.refusal})
    return parts


def _refused(exc: ValidationError) -> GatewayError:
    """Refuse a body with a 400 naming the top-level parameter; the message says where in it."""
    first = exc.errors()[0]
    raw = first["loc"]
    # pydantic puts the tag of a union told apart by ``type`` after a list item's index: the
    # item's type, not a field.
    loc = [
        str(part)
        for at, part in enumerate(raw)
        if not (at and isinstance(raw[at - 1], int) and part in _TAGS)
    ]
    inner = (first.get("ctx") or {}).get("field")
    if isinstance(inner, str) and inner:
        loc += inner.split(".")
    where = place(*where_in(loc)) if loc else "'body'"
    return GatewayError(400, f"invalid {where}: {first['msg']}", param=loc[0] if loc else None)


# -- the answer --------------------------------------------------------------------------------


def new_response_id() -> tuple[str, int]:
    """Return a fresh ``resp_`` id and the creation time."""
    return f"resp_{uuid.uuid4().hex}", int(time.time())


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [] if status == "in_progress" else [_text_part(text)]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id") or item_id.replace("fc_", "call_", 1),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "" if status == "completed" else "",
        "status": status,
    }


def token_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The usage object of a response (a batch's is the same)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _response(
    request: ResponsesRequest,
    *,
    response_id: str,
    created: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    finish_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if status == "completed" and finish_reason == "length":
        status = "incomplete"
    done = status in ("completed", "incomplete")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "completed_at": int(time.time()) if done else None,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": model,
        "output": output,
        "usage": usage,
        "background": False,
        "service_tier": "default",
        **request.echo(),
    }


def response_body(
    answer: Completion, request: ResponsesRequest, *, response_id: str, created: int
) -> dict[str, Any]:
    """Render a routed answer as a ``response`` object."""
    key = response_id.removeprefix("resp_")
    output: list[dict[str, Any]] = []
    if answer.text or not answer.tool_calls:
        output.append(_message_item(f"msg_{key}", answer.text))
    for index, call in enumerate(answer.tool_calls):
        output.append(_call_item(f"fc_{key}_{index}", call))
    return _response(
        request,
        response_id=response_id,
        created=created,
        model=answer.model,
        status="completed",
        output=output,
        usage=token_usage(answer.input_tokens, answer.output_tokens),
        finish_reason=answer.finish_reason,
    )


def answer_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A response's output items as the assistant's chat message (a kept conversation's last)."""
    text = "".join(
        part.get("text", "")
        for item in output
        if item["type"] == "message"
        for part in item["content"]
    )
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in output
        if item["type"] == "function_call"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


Keep = Callable[[dict[str, Any]], Awaitable[None]]
"""Keeps a finished response (``store``) before the client is told it is finished."""


class ResponseEvents:
    """Writes a streamed answer as the Responses API's server-sent events, in OpenAI's order.

    Each output item (the message, each function call) is added when its first piece comes,
    its pieces follow as deltas, and every item is done before the response is.
    """

    def __init__(
        self,
        request: ResponsesRequest,
        *,
        response_id: str,
        created: int,
        model: str,
        keep: Keep | None = None,
    ) -> None:
        self.request = request
        self.keep = keep
        self.response_id = response_id
        self.created = created
        self.model = model
        self._key = response_id.removeprefix("resp_")
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # the items, in their output order
        self._text: list[str] = []
        self._message: int | None = None  # the message's output index, once it began
        self._calls: dict[int, int] = {}  # a tool call's index in the deltas -> output index
        self._arguments: dict[int, list[str]] = {}
        self._unnamed: set[int] = set()  # calls whose first piece came without an id
        self._finish: str | None = None

    def opening(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        snapshot = self._snapshot("in_progress", usage=None)
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def delta(self, delta: CompletionDelta) -> bytes:
        """The events of one delta of the model's answer (maybe none)."""
        frames = b""
        if delta.text:
            if self._message is None:
                frames += self._open_message()
            self._text.append(delta.text)
            frames += self._event(
                "response.output_text.delta",
                item_id=f"msg_{self._key}",
                output_index=self._message,
                content_index=0,
                delta=delta.text,
                logprobs=[],
            )
        for piece in delta.tool_calls:
            frames += self._call_piece(piece)
        if delta.finish_reason:
            self._finish = delta.finish_reason
        return frames

    def _open_message(self) -> bytes:
        self._message = len(self._output)
        item = _message_item(f"msg_{self._key}", "", status="in_progress")
        self._output.append(item)
        return self._event(
            "response.output_item.added", output_index=self._message, item=item
        ) + self._event(
            "response.content_part.added",
            item_id=item["id"],
            output_index=self._message,
            content_index=0,
            part=_text_part(""),
        )

    def _call_piece(self, piece: dict[str, Any]) -> bytes:
        index = int(piece.get("index", 0))
        function = piece.get("function") or {}
        frames = b""
        if index not in self._calls:
            self._calls[index] = len(self._output)
            self._arguments[index] = []
            item = _call_item(f"fc_{self._key}_{index}", piece, status="in_progress")
            if not piece.get("id"):
                self._unnamed.add(index)
            self._output.append(item)
            frames += self._event(
                "response.output_item.added", output_index=self._calls[index], item=item
            )
        item = self._output[self._calls[index]]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if piece.get("id") and index in self._unnamed:  # an id that came after the first piece
            item["call_id"] = piece["id"]
            self._unnamed.discard(index)
        if function.get("arguments"):
            self._arguments[index].append(function["arguments"])
            frames += self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=self._calls[index],
                delta=function["arguments"],
            )
        return frames

    async def ended(self, input_tokens: int, output_tokens: int) -> bytes:
        """Every open item done, then ``response.completed`` (or ``.incomplete``), once the
        response is kept (a response that could not be kept ends ``response.failed``)."""
        # An empty answer is an empty message.
        frames = self._open_message() if self._message is None and not self._calls else b""
        for index, item in enumerate(self._output):
            if item["type"] == "message":
                text = "".join(self._text)
                item.update(_message_item(item["id"], text))
                frames += self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
                frames += self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=_text_part(text),
                )
            else:
                call = next(i for i, at in self._calls.items() if at == index)
                item["arguments"] = "".join(self._arguments[call])
                item["status"] = "completed"
                frames += self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            frames += self._event("response.output_item.done", output_index=index, item=item)
        final = self._snapshot("completed", usage=token_usage(input_tokens, output_tokens))
        if self.keep is not None:
            try:
                await self.keep(final)
            except SpineError as exc:
                return frames + self.failed(GatewayError.of(exc))
        return frames + self._event(f"response.{final['status']}", response=final)

    def failed(self, error: GatewayError) -> bytes:
        """``response.failed``, saying why (tokens were sent: there is no falling back now)."""
        # The codes OpenAI's clients know a failed response by; the message says the rest.
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failure = {"code": code, "message": str(error.body.get("message", error))}
        return self._event(
            "response.failed",
            response=self._snapshot("failed", usage=None, error=failure),
        )

    def _snapshot(
        self, status: str, *, usage: dict[str, Any] | None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return _response(
            self.request,
            response_id=self.response_id,
            created=self.created,
            model=self.model,
            status=status,
            output=[dict(item) for item in self._output] if status != "in_progress" else [],
            usage=usage,
            finish_reason=self._finish,
            error=error,
        )

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()
