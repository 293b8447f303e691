"""The inbound APIs (OpenAI, the Responses API, Anthropic, admin, the dashboard) and the
request pipeline they share."""

from __future__ import annotations

from aiohttp import web

from proxy.gateway import Gateway

__all__ = ["GATEWAY"]

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
