"""The embedded NATS and PostgreSQL want credentials: each NATS role does its real work and no
more, an external publisher reaches only its tenant's subjects, PostgreSQL wants the password."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from spine.events.bus import NatsBus
from spine.events.permissions import ROLE_GRANTS, publisher_grant, publisher_inbox_prefix
from spine.events.streams import (
    INGEST_CONSUMER,
    OUTCOMES_STREAM,
    TASKS_STREAM,
    StreamLayout,
    consumer_name,
)
from spine.events.subjects import (
    BUDGET_THRESHOLD,
    DLQ_TASKS,
    OUTCOMES_ALL,
    cancel_subject,
    event_subject,
    lane_subject,
    outcome_subject,
    progress_subject,
)
from spine.events.weights import WeightsChannel
from spine.platform.embedded.credentials import (
    NatsUser,
    add_nats_user,
    credentials_path,
    load_credentials,
    new_password,
    remove_nats_user,
    without_userinfo,
)
from spine.platform.embedded.stack import EmbeddedStack, reload_nats
from spine.platform.errors import ServiceUnavailable
from support.cli import cli_env, spine
from support.servers import embedded_data_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with (
        embedded_data_dir(tmp_path_factory.mktemp("credentials")) as data_dir,
        EmbeddedStack(data_dir, ["nats", "postgres"], nats_roles=ROLE_GRANTS) as running,
    ):
        running.start()
        yield running


def _url(stack: EmbeddedStack, user: str) -> str:
    credentials = load_credentials(stack.data_dir)
    assert credentials is not None
    nats_url = stack.endpoints().nats_url
    assert nats_url is not None
    return credentials.nats_url(nats_url, user)


class Violations:
    """The permission violations the server reports to one client."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def wait_for(self, fragment: str) -> str:
        for _ in range(500):  # 10 s: the server reports asynchronously
            for message in self.seen:
                if fragment.lower() in message.lower():  # nats-py lowercases some of them
                    return message
            await asyncio.sleep(0.02)
        raise AssertionError(f"no violation about {fragment!r}: {self.seen}")


async def _connect(url: str, violations: Violations, **options: str) -> Client:
    return await nats.connect(
        url, error_cb=violations.record, allow_reconnect=False, connect_timeout=2, **options
    )


@pytest.fixture
async def api(stack: EmbeddedStack) -> AsyncIterator[NatsBus]:
    bus = NatsBus(_url(stack, "api"), name="test-api", publish_timeout=0.5)
    await bus.wait_connected(5)
    # The API creates the streams and consumers, retrying as it does: a request of this bus
    # times out after 0.5 s, and a loaded machine can take longer to create a stream.
    await asyncio.wait_for(StreamLayout().ensure_when_ready(bus, retry_every=0.2), 60)
    yield bus
    await bus.close()


async def test_nats_refuses_a_client_without_or_with_wrong_credentials(
    stack: EmbeddedStack,
) -> None:
    bare = without_userinfo(_url(stack, "api"))
    violations = Violations()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _connect(bare, violations)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _connect(bare.replace("nats://", "nats://api:wrong@"), violations)
    assert "api:" not in NatsBus(_url(stack, "api"), name="shown").url.replace("api:***", "")
    assert oct(credentials_path(stack.data_dir).stat().st_mode & 0o777) == "0o600"
    assert oct((stack.data_dir / "run" / "nats.conf").stat().st_mode & 0o777) == "0o600"
    state_file = (stack.data_dir / "run" / "stack.json").read_text()
    assert all(u.password not in state_file for u in _users(stack))


def _users(stack: EmbeddedStack) -> list[NatsUser]:
    credentials = load_credentials(stack.data_dir)
    assert credentials is not None
    return list(credentials.nats_users.values())


async def test_the_api_role_submits_signals_and_follows_progress_and_no_more(
    stack: EmbeddedStack, api: NatsBus
) -> None:
    task_id = uuid.uuid4().hex
    ack = await api.publish_durable(lane_subject("normal"), b"{}", msg_id=task_id)
    assert ack.stream == TASKS_STREAM
    await api.publish_durable(event_subject("acme", "order.created"), b"{}", msg_id=task_id)
    await api.publish_durable(outcome_subject("acme"), b"{}", msg_id=task_id)
    heard: asyncio.Queue[Msg] = asyncio.Queue()

    async def hear(msg: Msg) -> None:
        await heard.put(msg)

    await api.subscribe(progress_subject(task_id), hear)  # SSE follows a task's progress
    await api.signal(progress_subject(task_id), b"step")
    assert (await asyncio.wait_for(heard.get(), 5)).data == b"step"
    await api.signal(cancel_subject(task_id), b"")

    # Dead letters are the worker's; the API cannot write them.
    with pytest.raises(ServiceUnavailable):
        await api.publish_durable(DLQ_TASKS, b"{}", msg_id=task_id)
    violations = Violations()
    nc = await _connect(_url(stack, "api"), violations)
    try:
        await nc.subscribe("spine.cancel.*")
        assert "subscription" in (await violations.wait_for("spine.cancel.*")).lower()
    finally:
        await nc.close()


@pytest.mark.parametrize("role", ["api", "worker"])
async def test_the_processes_that_meter_calls_announce_budget_thresholds(
    stack: EmbeddedStack, role: str
) -> None:
    # Both run model calls against budgets; the README promises the alert on this subject.
    listener = await _connect(_url(stack, "operator"), Violations())
    sender = await _connect(_url(stack, role), violations := Violations())
    try:
        heard = await listener.subscribe(BUDGET_THRESHOLD)
        await listener.flush()
        await sender.publish(BUDGET_THRESHOLD, b'{"type": "budget.threshold"}')
        await sender.flush()
        message = await heard.next_msg(timeout=5)
        assert message.data == b'{"type": "budget.threshold"}', violations.seen
    finally:
        await sender.close()
        await listener.close()


async def test_the_worker_role_consumes_acks_dead_letters_and_hears_cancels(
    stack: EmbeddedStack, api: NatsBus
) -> None:
    worker = NatsBus(_url(stack, "worker"), name="test-worker", publish_timeout=2)
    await worker.wait_connected(5)
    try:
        await StreamLayout().ensure(worker.js)  # a worker may start before the API
        cancels: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_cancel(msg: Msg) -> None:
            await cancels.put(msg)

        await worker.subscribe("spine.cancel.*", on_cancel)
        task_id = uuid.uuid4().hex
        await api.publish_durable(lane_subject("high"), task_id.encode(), msg_id=task_id)
        lane = await worker.js.pull_subscribe_bind(
            durable=consumer_name("high"), stream=TASKS_STREAM
        )
        fetched = [m for m in await lane.fetch(10, timeout=5) if m.data == task_id.encode()]
        assert fetched
        await fetched[0].in_progress()
        await fetched[0].ack_sync()
        events = await worker.js.pull_subscribe_bind(durable=INGEST_CONSUMER, stream="EVENTS")
        for message in await events.fetch(10, timeout=5):
            await message.ack()
        await worker.publish_durable(DLQ_TASKS, b"{}", msg_id=task_id)
        await worker.publish_durable(lane_subject("low"), b"{}", msg_id=f"child-{task_id}")
        await worker.signal(progress_subject(task_id), b"delta")
        await api.signal(cancel_subject(task_id), b"")
        assert (await asyncio.wait_for(cancels.get(), 5)).subject == cancel_subject(task_id)

        violations = Violations()
        nc = await _connect(_url(stack, "worker"), violations)
        try:
            await nc.subscribe("spine.progress.>")
            await violations.wait_for("spine.progress.>")
        finally:
            await nc.close()
    finally:
        await worker.close()


async def test_the_learner_role_reads_outcomes_and_publishes_no_work(
    stack: EmbeddedStack, api: NatsBus
) -> None:
    marker = uuid.uuid4().hex.encode()
    await api.publish_durable(outcome_subject("globex"), marker, msg_id=marker.decode())
    violations = Violations()
    nc = await _connect(_url(stack, "learner"), violations)
    try:
        js = nc.jetstream(timeout=2)
        outcomes = await js.pull_subscribe(
            "spine.outcomes.>", durable="learner", stream=OUTCOMES_STREAM
        )
        fetched = await outcomes.fetch(100, timeout=5)
        assert marker in [m.data for m in fetched]
        for message in fetched:
            await message.ack()
        await nc.publish(lane_subject("normal"), b"{}")
        await violations.wait_for("spine.tasks.normal")
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("tenant", "other"), [("acme", "globex"), ("acme.eu", "acme_eu"), ("acme_eu", "acme.eu")]
)
async def test_an_external_publisher_reaches_only_its_tenants_subjects(
    stack: EmbeddedStack, api: NatsBus, tenant: str, other: str
) -> None:
    # acme.eu and acme_eu once shared a subject token, so either could publish the other's.
    name = f"publisher-{uuid.uuid4().hex[:6]}"
    kind = f"order.created_{name}"  # this case's own subjects (another case may publish acme.eu's)
    grant = publisher_grant(tenant, name)
    user = NatsUser(
        user=name,
        password=new_password(),
        publish=grant.publish,
        subscribe=grant.subscribe,
        tenant=tenant,
        inbox_prefix=publisher_inbox_prefix(name),
    )
    add_nats_user(stack.data_dir, user)
    assert reload_nats(stack.data_dir)  # the running server takes the new user
    url = _url(stack, name)
    violations = Violations()
    nc = None
    for _ in range(150):  # the reload is asynchronous
        try:
            nc = await _connect(url, violations, inbox_prefix=user.inbox_prefix or "")
            break
        except (nats.errors.Error, OSError):  # refused, or reset while the server reloads
            await asyncio.sleep(0.1)
    assert nc is not None
    try:
        js = nc.jetstream(timeout=1)
        ack = await js.publish(event_subject(tenant, kind), b'{"ok": 1}')
        assert ack.stream == "EVENTS"
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.publish(event_subject(other, kind), b'{"spoofed": 1}')
        await violations.wait_for(event_subject(other, kind))
        await nc.publish(lane_subject("normal"), b"{}")
        await violations.wait_for("spine.tasks.normal")
        await nc.subscribe("_INBOX.>")  # other clients' replies stay theirs
        await violations.wait_for("_INBOX.>")
    finally:
        await nc.close()
    with pytest.raises(nats.js.errors.NotFoundError):  # nothing of the other's was stored
        await api.js.get_last_msg("EVENTS", event_subject(other, kind))

    remove_nats_user(stack.data_dir, name)
    reload_nats(stack.data_dir)
    for _ in range(150):
        try:
            again = await _connect(url, Violations())
            await again.close()
            await asyncio.sleep(0.1)
        except (nats.errors.Error, OSError):  # refused, or cut off while it connected
            break
    else:
        raise AssertionError("a removed publisher can still connect")


async def test_postgres_wants_the_password(stack: EmbeddedStack) -> None:
    url = stack.endpoints().database_url
    assert url is not None and ":" in url.split("@")[0].removeprefix("postgresql://")
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
    bare = without_userinfo(url).replace("postgresql://", "postgresql://postgres@")
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await asyncpg.connect(bare, password="")
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await asyncpg.connect(bare, password="wrong")
    hba = (stack.data_dir / "postgres" / "pg_hba.conf").read_text()
    assert "trust" not in hba.replace("# Written", "")


async def test_new_credentials_set_a_new_password_and_the_old_one_is_refused(
    stack: EmbeddedStack,
) -> None:
    old = stack.endpoints().database_url
    path = credentials_path(stack.data_dir)
    raw = json.loads(path.read_text())
    raw["postgres"]["password"] = new_password()
    path.write_text(json.dumps(raw))
    stack.restart("postgres")  # set in single-user mode before the server starts
    new = stack.endpoints().database_url
    assert new is not None and old is not None and new != old
    conn = await asyncpg.connect(new)
    await conn.close()
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await asyncpg.connect(old)
    assert raw["postgres"]["password"] not in (stack.data_dir / "logs" / "postgres.log").read_text()


async def test_the_learner_announces_weights_that_the_api_and_the_worker_follow(
    stack: EmbeddedStack,
) -> None:
    buses = {
        role: NatsBus(_url(stack, role), name=f"test-{role}")
        for role in ("api", "worker", "learner")
    }
    stop = asyncio.Event()
    loaded: dict[str, list[int]] = {"api": [], "worker": []}
    try:
        for bus in buses.values():
            await bus.wait_connected(5)

        def follower(role: str) -> Callable[[int], Awaitable[None]]:
            async def load(version: int) -> None:
                loaded[role].append(version)

            return load

        version = int(uuid.uuid4().int % 1_000_000)
        await WeightsChannel(buses["learner"]).announce(version)
        follows = [
            asyncio.create_task(WeightsChannel(buses[role]).follow(follower(role), stop, retry=0.1))
            for role in loaded
        ]
        for _ in range(100):
            if all(version in seen for seen in loaded.values()):
                break
            await asyncio.sleep(0.05)
        assert all(version in seen for seen in loaded.values()), loaded
        await WeightsChannel(buses["learner"]).announce(version + 1)  # a watch, never a poll
        for _ in range(100):
            if all(version + 1 in seen for seen in loaded.values()):
                break
            await asyncio.sleep(0.05)
        assert all(version + 1 in seen for seen in loaded.values()), loaded
        stop.set()
        await asyncio.gather(*follows)
    finally:
        stop.set()
        for bus in buses.values():
            await bus.close()


async def test_learn_replay_runs_over_a_running_stack_as_the_replay_user(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    line = {"id": "p0", "prompt": "hello", "outcomes": {"a": {"score": 1.0}, "b": {"score": 0.0}}}
    (tmp_path / "rec.jsonl").write_text("\n".join(json.dumps(line) for _ in range(3)) + "\n")
    # No NATS URL: the command attaches to the stack running in the data dir, as `make up` does.
    env = cli_env(GENAI_DATA_DIR=str(stack.data_dir), GENAI_OLLAMA_URL="http://127.0.0.1:9")

    run = await spine(
        "learn", "replay", "rec.jsonl", "--knob", "0.1", env=env, cwd=tmp_path, timeout=120
    )

    assert run.code == 0, run.both
    assert json.loads(run.out)["prompts"] == 3
    assert "permissions violation" not in run.err


async def test_the_replay_role_touches_none_of_the_platforms_subjects(
    stack: EmbeddedStack,
) -> None:
    violations = Violations()
    nc = await _connect(_url(stack, "replay"), violations)
    try:
        for subject in (
            lane_subject("normal"),
            event_subject("acme", "order.created"),
            outcome_subject("acme"),
        ):
            await nc.publish(subject, b"{}")
            await violations.wait_for(subject)
        await nc.subscribe(OUTCOMES_ALL)
        await violations.wait_for(OUTCOMES_ALL)
    finally:
        await nc.close()
