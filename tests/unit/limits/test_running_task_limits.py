"""The running-task limit of each tenant and the wait of a task over it."""

from __future__ import annotations

from spine.platform.limits import RunningTaskLimits
from spine.platform.settings import LimitSettings, TenantLimits


def test_no_tenant_is_limited_by_default() -> None:
    limits = RunningTaskLimits(LimitSettings())
    assert not limits.active
    assert limits("acme") is None


def test_a_tenant_has_its_own_limit_or_the_default_and_zero_lifts_it() -> None:
    settings = LimitSettings(
        tenant_running_tasks=4,
        tenants={
            "acme": TenantLimits(running_tasks=2),
            "globex": TenantLimits(running_tasks=0),
            "initech": TenantLimits(requests_per_minute=5),
        },
    )
    limits = RunningTaskLimits(settings)
    assert limits.active
    assert limits("acme") == 2
    assert limits("globex") is None
    assert limits("initech") == 4
    assert limits("umbrella") == 4


def test_only_one_tenants_limit_makes_the_limits_active() -> None:
    limits = RunningTaskLimits(LimitSettings(tenants={"acme": TenantLimits(running_tasks=1)}))
    assert limits.active
    assert limits("globex") is None


def test_the_wait_doubles_per_delivery_up_to_its_maximum() -> None:
    limits = RunningTaskLimits(LimitSettings(task_wait=1.0, task_wait_max=10.0), jitter=0.0)
    assert [limits.wait_before(n) for n in (1, 2, 3, 4, 5, 50)] == [1, 2, 4, 8, 10, 10]


def test_the_jitter_stays_within_its_share() -> None:
    limits = RunningTaskLimits(LimitSettings(task_wait=2.0), jitter=0.2)
    waits = [limits.wait_before(1) for _ in range(200)]
    assert all(1.6 <= wait <= 2.4 for wait in waits)
    assert len(set(waits)) > 1
