"""The transport registry: ``[llm] transport`` name -> the class that carries requests.

Apart from the transports themselves so that the dependency goes one way: the SDK
transports (``builder.llm.transport_openai``) and the lean one (``builder.llm.transport_http``)
build on ``builder.llm.transport``, and only this module knows them all. The SDK ones are
imported on first use: ``import openai`` alone costs ~0.6 s, which runs that never use the
SDK should not pay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builder.llm.endpoint import Endpoint
from builder.llm.transport import Transport
from builder.llm.transport_http import HttpTransport
from builder.settings.llm import LLMSettings


def _openai_transport() -> type:
    from builder.llm.transport_openai import OpenAITransport

    return OpenAITransport


def _azure_transport() -> type:
    from builder.llm.transport_openai import AzureOpenAITransport

    return AzureOpenAITransport


#: ``[llm] transport`` name -> a function returning the class (see the module docstring).
TRANSPORTS: dict[str, Callable[[], type]] = {
    "http": lambda: HttpTransport,
    "aiohttp": lambda: Transport,
    "openai": _openai_transport,
    "azure": _azure_transport,
}


def make_transport(ep: Endpoint, settings: LLMSettings) -> Any:
    """The transport ``ep.transport`` names, for ``ep`` (``Transport`` or an SDK transport)."""
    return TRANSPORTS[ep.transport]()(ep, settings)
