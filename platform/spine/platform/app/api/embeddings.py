"""``POST /v1/embeddings``, compatible with OpenAI's, through the model router.

``input`` is a string or a list of up to 2,048 strings; ``model`` names a model, or ``"auto"``
lets the routing strategy choose among the models that make embeddings (``spine_strategy`` or
the ``X-Spine-Strategy`` header, as for chat). ``encoding_format`` is ``float`` or ``base64``
(little-endian float32, what the official clients ask for by default). ``dimensions`` is
honoured by models that shorten their vectors (OpenAI's ``text-embedding-3-*``); for any other
it must be the model's own size, else the request is refused naming ``dimensions``.

Calls are metered like chat calls (budgets reserved at the input's price, a usage row per call,
an outcome event) but never cached. Errors are in OpenAI's shape; the headers say which model
answered, why, and what it cost.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spine.platform.app.api._openai import AUTO, GatewayError, fallback_header, openai_error
from spine.platform.app.api.auth import authenticate, platform_of
from spine.platform.app.api.errors import documented
from spine.platform.app.api.hot_routes import FastJSONResponse
from spine.platform.app.api.input_guard import checked_json
from spine.platform.errors import SpineError
from spine.platform.metering import EXPLICIT, CallContext
from spine.platform.models import EmbeddingRequest
from spine.platform.models.openai_errors import json_body
from spine.platform.schema import money_text

__all__ = ["EmbeddingsBody", "router"]

router = APIRouter(prefix="/v1", tags=["gateway"])

MAX_INPUTS = 2048
STRATEGY_HEADER = "x-spine-strategy"


class EmbeddingsBody(BaseModel):
    """A ``POST /v1/embeddings`` body."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=16_384)
    user: str | None = None
    spine_strategy: str | None = None

    @classmethod
    def parse(cls, raw: bytes, *, checked: Any = None) -> EmbeddingsBody:
        """Read and validate a body; problems are 400s naming the parameter.

        ``checked`` is the body decoded and found storable already, if it was.
        """
        body = json_body(raw, checked=checked)
        try:
            request = cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(part) for part in first["loc"]]
            raise GatewayError(
                400,
                f"invalid '{loc[0] if loc else 'body'}': {first['msg']}",
                param=loc[0] if loc else None,
            ) from None
        unknown = sorted(request.model_extra or {})
        if unknown:
            raise GatewayError.unknown_parameters(unknown)
        request.texts()  # refuse a bad input before anything is reserved or called
        return request

    def texts(self) -> list[str]:
        """The inputs as a list of texts; token arrays and empty texts are refused."""
        given = [self.input] if isinstance(self.input, str) else list(self.input)
        if not given:
            raise GatewayError(400, "'input' must not be an empty list", param="input")
        if len(given) > MAX_INPUTS:
            raise GatewayError(
                400, f"'input' may hold at most {MAX_INPUTS} texts, not {len(given)}", param="input"
            )
        texts: list[str] = []
        for position, item in enumerate(given):
            if not isinstance(item, str):
                raise GatewayError(
                    400,
                    "'input' must be text: token arrays are not supported, as the router may "
                    "choose a model with another tokenizer",
                    param="input",
                )
            if not item.strip():
                raise GatewayError(
                    400, f"'input[{position}]' is empty; each input must have text", param="input"
                )
            texts.append(item)
        return texts

    @property
    def routed_model(self) -> str | None:
        """The model asked for, None when the router should choose."""
        return None if self.model == AUTO else self.model


@router.post("/embeddings", response_model=None, responses=documented(404, 429, 502))
async def create_embeddings(request: Request) -> Response:
    """Embed the inputs with a routed model, in OpenAI's shape."""
    try:
        caller = await authenticate(request)
        asked = EmbeddingsBody.parse(await request.body(), checked=checked_json(request.scope))
        models = await platform_of(request).metered_models()
        call = EmbeddingRequest(
            texts=asked.texts(),
            model=asked.routed_model,
            strategy=request.headers.get(STRATEGY_HEADER) or asked.spine_strategy or None,
            dimensions=asked.dimensions,
        )
        context = CallContext(tenant=caller.tenant, key_id=caller.key_id, use_cache=False)
        metered = await models.embed(call, context)
    except GatewayError as exc:
        return openai_error(exc)
    except SpineError as exc:
        return openai_error(_about_input(GatewayError.of(exc)))
    answer = metered.embedding
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, asked)}
        for index, vector in enumerate(answer.vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": answer.model,
        "usage": {"prompt_tokens": answer.input_tokens, "total_tokens": answer.input_tokens},
    }
    headers = {
        "X-Spine-Model": answer.model,
        "X-Spine-Provider": answer.provider,
        "X-Spine-Strategy": EXPLICIT if asked.routed_model else (answer.strategy or ""),
        "X-Spine-Fallback": fallback_header(answer.fallback_path),
        "X-Spine-Cost": money_text(metered.cost),
        "X-Spine-Cache": "bypass",
    }
    return FastJSONResponse(body, headers=headers)


def _encoded(vector: list[float], asked: EmbeddingsBody) -> list[float] | str:
    if asked.encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _about_input(error: GatewayError) -> GatewayError:
    # A chat call's prompt is its messages; an embedding call's is its input.
    if error.body.get("param") == "messages":
        error.body["param"] = "input"
    return error
