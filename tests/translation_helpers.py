"""What the translation tests share: a group over fake vendors of given types and models,
and the body a fake vendor last received."""

from __future__ import annotations

from typing import Any

from tests.conftest import FakeFactory, ProxyFactory, RunningProxy, build_config


async def group_of(
    fakes: FakeFactory,
    proxies: ProxyFactory,
    *deployments: tuple[str, str],
    group: str = "",
) -> tuple[list[Any], RunningProxy]:
    """Fakes `v0`, `v1`... of the given (vendor type, model), and a proxy whose one group
    `smart` has them in that order (priority); `group` adds lines to the group's YAML."""
    started = [
        await fakes(f"v{i}", vendor=vendor, models=[model])
        for i, (vendor, model) in enumerate(deployments)
    ]
    models = f"  smart:\n{group}    deployments:\n" + "".join(
        f"      - {{vendor: v{i}, model: {model}}}\n" for i, (_, model) in enumerate(deployments)
    )
    return started, await proxies(build_config({f"v{i}": f for i, f in enumerate(started)}, models))


def sent(fake: Any) -> dict[str, Any]:
    """The body of the last request `fake` received."""
    body: dict[str, Any] = fake.stats.last_requests[-1].body
    return body
