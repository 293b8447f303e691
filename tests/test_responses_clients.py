"""Real clients of the Responses API nobody here wrote, through the proxy: the openai-agents
SDK (its default model speaks `/v1/responses`) running a tool-using agent, and LangChain's
ChatOpenAI with `use_responses_api=True`; each against a native (OpenAI) and a translated
(Anthropic) deployment."""

from __future__ import annotations

from typing import Any

import pytest
from agents import (
    Agent,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import ToolMessage
from langchain_openai import ChatOpenAI

from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config

MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4o"}
VENDORS = pytest.mark.parametrize("vendor", ["openai", "anthropic"])


async def _proxy(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> tuple[Any, RunningProxy]:
    fake = await fakes("v", vendor=vendor)
    models = f"  smart:\n    deployments:\n      - {{vendor: v, model: {MODELS[vendor]}}}\n"
    return fake, await proxies(build_config({"v": fake}, models))


@VENDORS
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_openai_agents_runs_a_tool_using_agent(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str, streamed: bool
) -> None:
    fake, proxy = await _proxy(fakes, proxies, vendor)
    set_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    model = OpenAIResponsesModel(model="smart", openai_client=proxy.client())
    agent = Agent(
        name="forecaster", instructions="Use your tools.", tools=[get_weather], model=model
    )
    if streamed:
        run = Runner.run_streamed(agent, "What is the weather in Paris?")
        async for _ in run.stream_events():
            pass
        output = run.final_output
    else:
        output = (await Runner.run(agent, "What is the weather in Paris?")).final_output
    assert asked  # the agent called the tool through the proxy...
    assert output == "".join(fake.pieces)  # ...and answered after its result
    sent = fake.stats.last_requests
    assert len(sent) == 2
    path = "/v1/responses" if vendor == "openai" else "/v1/messages"
    assert {r.path for r in sent} == {path}


@VENDORS
async def test_langchain_with_the_responses_api(
    fakes: FakeFactory, proxies: ProxyFactory, vendor: str
) -> None:
    fake, proxy = await _proxy(fakes, proxies, vendor)
    llm = ChatOpenAI(
        model="smart",
        base_url=f"{proxy.url}/v1",
        api_key="k",  # type: ignore[arg-type]
        use_responses_api=True,
        max_retries=0,
    )
    answer = await llm.ainvoke("hello")
    assert answer.text == "".join(fake.pieces)

    def get_time(tz: str) -> str:
        """The time in a time zone."""
        return "noon"

    tooled = llm.bind_tools([get_time])
    first = await tooled.ainvoke("what time is it in UTC?")
    assert [c["name"] for c in first.tool_calls] == ["get_time"]
    reply = ToolMessage(content="noon", tool_call_id=first.tool_calls[0]["id"])
    final = await tooled.ainvoke(["what time is it in UTC?", first, reply])
    assert final.text == "".join(fake.pieces)
    chunks = [chunk async for chunk in llm.astream("stream please")]
    assert "".join(c.text for c in chunks) == "".join(fake.pieces)
