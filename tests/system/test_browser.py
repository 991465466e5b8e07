"""Browser tests: Playwright drives Debian's Chromium against a live server (daphne, websockets).

pytest-django's ``live_server`` serves no websockets, so these use Channels'
``ChannelsLiveServerTestCase``: daphne in a forked child process, serving HTTP and the live
socket from the same process. The simulated agents are the real Python client
(``opsconsole_client``) in a background thread, calling the gateway over HTTP on that server, so
every broadcast happens in the server process and the in-memory channel layer of the embedded
default reaches the browser as well as Redis does.

Chromium comes from Debian (``apt-get install chromium``; ``.ci/run`` installs it): Playwright's
own browser download is not available here.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from asgiref.sync import SyncToAsync
from channels.layers import channel_layers
from channels.testing import ChannelsLiveServerTestCase
from django.db import connections
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from agents.demo.world import demo_policy_document
from agents.models import Agent, KillSwitch, Run, ToolCall
from agents.policy import services
from approvals.models import ApprovalRequest
from opsconsole import roles
from opsconsole_client import Budgets, Gateway, Interrupted, Stop
from tests.conftest import AgentPersona, Person, make_agent, make_person, restore_baseline

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous waits for a loaded CI machine; the figures that matter are measured, not waited for.
LIVE_TIMEOUT_MS = 10_000
# The issue asks for "within a second"; the bound leaves room for a busy machine.
APPROVAL_ANSWER_BOUND_SECONDS = 3.0

T = TypeVar("T")


def orm(query: Callable[[], T]) -> T:
    """Run database code on a thread of its own.

    Playwright's sync API keeps an event loop registered on the test's thread, and Django
    refuses synchronous ORM calls on a thread with a running loop (SynchronousOnlyOperation).
    """

    def call() -> T:
        try:
            return query()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def chromium_path() -> str:
    path = os.environ.get("OPSCONSOLE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail(
            f"Chromium not found at {path}: apt-get install -y chromium "
            "(or set OPSCONSOLE_CHROMIUM to its path)"
        )
    return path


def publish_demo_policy() -> None:
    """The seed's config plus ``email.send`` (one reviewer) and the demo agents' allowlists."""
    services.policy_publish(document=demo_policy_document(), author="system", reason="browser test")


@dataclass
class AgentOutcome:
    """What the simulated agent saw, filled in by its thread."""

    run_id: int | None = None
    status: str | None = None
    stop_reason: str | None = None
    error: BaseException | None = None
    tool_started_at: float | None = None
    started: threading.Event = field(default_factory=threading.Event)


class SimulatedAgent:
    """The real Python client in a background thread, working against the live server."""

    def __init__(self, base_url: str, key: str, work: Callable[[Any, AgentOutcome], None]):
        self.base_url = base_url
        self.key = key
        self.work = work
        self.outcome = AgentOutcome()
        self.thread = threading.Thread(target=self._main, name="simulated-agent", daemon=True)

    def start(self) -> SimulatedAgent:
        self.thread.start()
        return self

    def join(self, timeout: float = 15.0) -> AgentOutcome:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the simulated agent did not finish"
        return self.outcome

    def _main(self) -> None:
        outcome = self.outcome
        try:
            with (
                Gateway(self.base_url, self.key, poll_seconds=10) as gateway,
                gateway.run("browser test task", budgets=Budgets(max_tool_calls=15)) as run,
            ):
                outcome.run_id = run.id
                outcome.started.set()
                self.work(run, outcome)
                run.answer = "done"
            outcome.status, outcome.stop_reason = run.status, run.stop_reason
        except Stop as stop:
            outcome.stop_reason = stop.reason
            outcome.error = stop
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            outcome.error = exc
        finally:
            outcome.started.set()


class BrowserTestCase(ChannelsLiveServerTestCase):
    """A live daphne server, and a fresh Chromium per test (Playwright's sync API lives in
    setUp/tearDown: started in setUpClass it makes Django's cleanup raise
    SynchronousOnlyOperation)."""

    playwright: Playwright
    browser: Browser

    @classmethod
    def setUpClass(cls) -> None:
        # The server is a fork of this process: a PostgreSQL connection pool opened here would be
        # inherited (the same sockets used by two processes). Close it; each side opens its own.
        for connection in connections.all():
            connection.close()
            close_pool = getattr(connection, "close_pool", None)
            if close_pool is not None:
                close_pool()
        # Likewise what earlier async tests left here: a channel layer (the in-memory layer's
        # queues belong to that test's event loop), and asgiref's executor for thread-sensitive
        # code, whose one thread does not survive the fork, so the server's websocket consumers
        # would wait on it for ever (seen when the consumer tests ran first).
        channel_layers.backends.clear()
        SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
        super().setUpClass()

    def setUp(self) -> None:
        super().setUp()
        restore_baseline()
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS
        )
        self.addCleanup(self.browser.close)

    def log_in(self, person: Person) -> Page:
        """A new browser context (its own cookies), signed in through the real login form."""
        context = self.browser.new_context(base_url=self.live_server_url)
        context.set_default_timeout(LIVE_TIMEOUT_MS)
        page = context.new_page()
        page.goto("/login/")
        page.fill("#id_username", person.user.get_username())
        page.fill("#id_password", person.password)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{self.live_server_url}/")
        expect(page.locator(".who")).to_contain_text(person.user.get_username())
        return page

    def open_live(self, page: Page, path: str) -> None:
        """Open a page and wait until its websocket is connected (events before it are lost)."""
        page.goto(path)
        expect(page.locator("body")).to_have_attribute("data-live", "connected")

    def start_agent(
        self, persona: AgentPersona, work: Callable[[Any, AgentOutcome], None]
    ) -> SimulatedAgent:
        return SimulatedAgent(self.live_server_url, persona.key, work).start()


class ApprovalInTheBrowserTests(BrowserTestCase):
    def test_a_reviewer_approves_a_pending_write_and_the_waiting_agent_proceeds(self) -> None:
        def given() -> tuple[Person, AgentPersona]:
            publish_demo_policy()
            return make_person("rita-reviewer", roles.REVIEWER), make_agent("mail-bot")

        reviewer, mail_bot = orm(given)
        queue = self.log_in(reviewer)
        self.open_live(queue, "/approvals/")
        expect(queue.locator("#queue-empty")).to_be_visible()

        email = {"to": "customer@example.com", "subject": "Your refund", "body": "Issued."}
        sent: list[dict[str, Any]] = []

        def work(run: Any, outcome: AgentOutcome) -> None:
            def send_email(args: dict[str, Any]) -> dict[str, Any]:
                outcome.tool_started_at = time.monotonic()
                sent.append(args)
                return {"message_id": "msg-4711"}

            run.tool("email.send", email, send_email)

        agent = self.start_agent(mail_bot, work)

        # The request arrives in the already open queue live, with its exact arguments.
        card = queue.locator("article.approval")
        expect(card).to_have_count(1)
        expect(card).to_contain_text("email.send")
        expect(card).to_contain_text("customer@example.com")
        expect(queue.locator("#pending-count")).to_have_text("1")
        approval = orm(lambda: ApprovalRequest.objects.get())
        run = orm(lambda: Run.objects.get(pk=approval.run_id))
        self.assertEqual((approval.status, run.status), ("pending", "waiting_approval"))
        self.assertEqual(sent, [], "the write ran before anyone approved it")

        clicked_at = time.monotonic()
        card.get_by_role("button", name="Approve").click()
        outcome = agent.join(timeout=APPROVAL_ANSWER_BOUND_SECONDS + 10)

        self.assertIsNone(outcome.error, f"the agent failed: {outcome.error!r}")
        assert outcome.tool_started_at is not None, "the agent never ran the approved write"
        answered_in = outcome.tool_started_at - clicked_at
        print(f"\nthe agent proceeded {answered_in * 1000:.0f} ms after the Approve click")
        self.assertLess(answered_in, APPROVAL_ANSWER_BOUND_SECONDS)
        self.assertEqual(sent, [email])
        self.assertEqual((outcome.status, outcome.stop_reason), ("succeeded", "ok"))

        # The card shows the decision in place; the database agrees.
        expect(queue.locator(f"#approval-{approval.pk}")).to_contain_text("Approved")
        approval, run = orm(lambda: (ApprovalRequest.objects.get(), Run.objects.get(pk=run.pk)))
        decisions = orm(
            lambda: list(approval.decisions.values_list("reviewer__username", "verdict"))
        )
        call = orm(lambda: ToolCall.objects.get(run=run))
        self.assertEqual(approval.status, "approved")
        self.assertEqual(decisions, [("rita-reviewer", "approve")])
        self.assertEqual((run.status, run.stop_reason), ("succeeded", "ok"))
        self.assertEqual(
            (call.tool, call.result_ok, call.output),
            ("email.send", True, {"message_id": "msg-4711"}),
        )


def kill_switch() -> KillSwitch:
    return orm(lambda: KillSwitch.objects.get(pk=1))


class KillSwitchBannerTests(BrowserTestCase):
    def propose(self, page: Page, mode: str, reason: str) -> None:
        """Step one on the kill-switch page: choose, say why, read the confirmation."""
        page.goto("/kill-switch/")
        page.select_option("#id_mode", mode)
        page.fill("#id_reason", reason)
        page.get_by_role("button", name="Review the change…").click()
        expect(page.locator("h1")).to_contain_text(f"Confirm: kill switch to {mode}")
        expect(page.locator("#killswitch-impact")).to_contain_text(reason)
        self.assertNotEqual(kill_switch().mode, mode, "changed before it was confirmed")

    def confirm(self, page: Page, mode: str) -> None:
        page.get_by_role("button", name=f"Yes, set the kill switch to {mode}").click()
        expect(page.locator(".messages")).to_contain_text(f"Kill switch set to {mode}.")

    def test_the_banner_appears_and_goes_on_another_users_open_page_without_reload(self) -> None:
        admin, oncall = orm(
            lambda: (
                make_person("ada-admin", roles.ADMIN),
                make_person("olivia-oncall", roles.ONCALL),
            )
        )
        switcher = self.log_in(admin)
        watcher = self.log_in(oncall)
        self.propose(switcher, "disable_writes", "vendor outage, INC-212")
        # The watcher's page opens last and the switch follows within seconds: with Redis, an
        # idle socket is dropped after 5 s and an event sent while it reconnects never reaches
        # the banner (a console bug, reported; see docs/performance.md).
        self.open_live(watcher, "/runs/")
        banner = watcher.locator("#killswitch-banner")
        expect(banner).to_be_hidden()
        watcher.evaluate("window.__openedOnce = true")  # a reload would wipe it out

        self.confirm(switcher, "disable_writes")
        expect(banner).to_be_visible()
        expect(banner.locator('[data-field="mode"]')).to_have_text("disable_writes")
        expect(banner.locator('[data-field="reason"]')).to_have_text("vendor outage, INC-212")
        expect(banner.locator('[data-field="set_by"]')).to_contain_text("ada-admin")
        switch = kill_switch()
        self.assertEqual((switch.mode, switch.reason), ("disable_writes", "vendor outage, INC-212"))

        self.propose(switcher, "off", "vendor is back")
        self.confirm(switcher, "off")
        expect(banner).to_be_hidden()
        self.assertTrue(watcher.evaluate("window.__openedOnce === true"), "the page was reloaded")
        self.assertEqual(kill_switch().mode, "off")


class RunMetersTests(BrowserTestCase):
    def test_the_tool_call_meter_moves_while_a_simulated_agent_works(self) -> None:
        def given() -> tuple[Person, AgentPersona]:
            publish_demo_policy()
            return make_person("olivia-oncall", roles.ONCALL), make_agent("support-bot")

        oncall, support_bot = orm(given)
        go, paused, resume = threading.Event(), threading.Event(), threading.Event()
        wait_seconds = LIVE_TIMEOUT_MS / 1000

        def work(run: Any, outcome: AgentOutcome) -> None:
            assert go.wait(wait_seconds)
            for i in range(3):
                run.tool("kb.read", {"q": f"refund policy {i}"}, lambda args: {"text": "30 days"})
                time.sleep(0.1)
            paused.set()
            assert resume.wait(wait_seconds)
            for i in range(3, 5):
                run.tool("kb.read", {"q": f"refund policy {i}"}, lambda args: {"text": "30 days"})

        agent = self.start_agent(support_bot, work)
        self.assertTrue(agent.outcome.started.wait(wait_seconds))
        run_id = agent.outcome.run_id
        self.assertIsNotNone(run_id, f"the run did not start: {agent.outcome.error!r}")

        page = self.log_in(oncall)
        self.open_live(page, f"/runs/{run_id}/")
        meter = page.locator('[data-meter="tool_calls"]')
        status = page.locator("#run-header [data-field=status]")
        expect(meter.locator(".meter-value")).to_have_text("0 / 15")

        go.set()
        self.assertTrue(paused.wait(wait_seconds))
        expect(meter.locator(".meter-value")).to_have_text("3 / 15")
        expect(meter.locator("progress")).to_have_js_property("value", 20)
        # It moved while the run was still going, not only at its end.
        self.assertEqual(orm(lambda: Run.objects.get(pk=run_id).status), "running")
        expect(status).to_have_text("Running")

        resume.set()
        outcome = agent.join()
        self.assertIsNone(outcome.error, f"the agent failed: {outcome.error!r}")
        expect(meter.locator(".meter-value")).to_have_text("5 / 15")
        expect(status).to_have_text("Succeeded")
        run = orm(lambda: Run.objects.get(pk=run_id))
        self.assertEqual((run.status, run.stop_reason, run.tool_calls), ("succeeded", "ok", 5))


class LoopingAgent:
    """A simulated agent that starts a run, works until the run stops, and starts the next one,
    until :meth:`stop` (the demo fleet's loop, with the real client in a background thread).
    Refused run starts (a paused agent) are counted and retried after a short wait."""

    def __init__(
        self, base_url: str, key: str, task: str, work: Callable[[Any, int], None]
    ) -> None:
        self.stopping = threading.Event()
        self.gateway = Gateway(base_url, key, poll_seconds=10, interrupt=self.stopping)
        self.task, self.work = task, work
        self.outcomes: list[str] = []  # each run's stop reason (or "refused:<reason>")
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, name=f"looping-{task}", daemon=True)

    def start(self) -> LoopingAgent:
        self.thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.task}: the simulated agent did not finish"

    def _main(self) -> None:
        iteration = 0
        with self.gateway:
            while not self.stopping.is_set():
                iteration += 1
                try:
                    run = self.gateway.run(self.task, budgets=Budgets(max_tool_calls=15))
                except Stop as stop:
                    self.outcomes.append(f"refused:{stop.reason}")
                    self.stopping.wait(0.3)
                    continue
                try:
                    with run:
                        self.work(run, iteration)
                        run.answer = "done"
                    self.outcomes.append(run.stop_reason or run.status)
                except Stop as stop:
                    self.outcomes.append(stop.reason)
                except Interrupted:
                    return
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    if not self.stopping.is_set():
                        self.errors.append(exc)
                self.stopping.wait(0.2)


class IncidentRoomTests(BrowserTestCase):
    """Issue 14's scenario: a runaway agent hammers ``browser.open``; a fresh on-call engineer
    finds it from the landing page and contains it in at most 3 clicks after login."""

    def test_oncall_finds_and_pauses_the_runaway_agent_in_three_clicks(self) -> None:
        def given() -> tuple[Person, AgentPersona, AgentPersona]:
            publish_demo_policy()
            return (
                make_person("olga-oncall", roles.ONCALL),
                make_agent("browser-runaway"),
                make_agent("support-bot"),
            )

        oncall, runaway_persona, quiet_persona = orm(given)

        def runaway_work(run: Any, iteration: int) -> None:
            attempt = 0
            while True:  # until a Stop: the budget, or the pause
                attempt += 1
                run.tool(
                    "browser.open",
                    {"url": f"https://vendor.example/pricing?run={iteration}&attempt={attempt}"},
                    lambda args: {"url": args["url"], "status": 200, "title": "503"},
                )
                time.sleep(0.05)

        def quiet_work(run: Any, iteration: int) -> None:
            hits = run.tool("search.read", {"q": f"reset password {iteration}"}, lambda a: {})
            run.tool("kb.read", {"id": f"kb-{iteration}", "hits": hits}, lambda a: {"text": "ok"})
            time.sleep(0.5)

        runaway = LoopingAgent(
            self.live_server_url, runaway_persona.key, "compare vendor prices", runaway_work
        ).start()
        quiet = LoopingAgent(
            self.live_server_url, quiet_persona.key, "answer a customer", quiet_work
        ).start()
        self.addCleanup(runaway.stop)  # idempotent; the test stops them itself first
        self.addCleanup(quiet.stop)

        def allowed_calls(agent: str, tool: str | None = None) -> int:
            calls = ToolCall.objects.filter(run__agent__name=agent, decision="allow")
            return (calls.filter(tool=tool) if tool else calls).count()

        # The storm is on: the runaway has made well more calls than the quiet agent.
        deadline = time.monotonic() + LIVE_TIMEOUT_MS / 1000
        while orm(lambda: allowed_calls("browser-runaway", "browser.open")) < 20:
            self.assertLess(time.monotonic(), deadline, "the storm did not start")
            time.sleep(0.2)
        self.assertGreater(orm(lambda: allowed_calls("support-bot")), 0)

        # A fresh on-call engineer logs in: typing and submitting the login form is not counted.
        started = time.monotonic()
        page = self.log_in(oncall)
        clicks = 0

        def click(locator: Any) -> None:
            nonlocal clicks
            clicks += 1
            locator.click()

        # The landing page ranks agents by what they cost now; the runaway is at the top.
        ranking = page.locator("section.panel").filter(
            has=page.get_by_role("heading", name="Agents by cost now")
        )
        top = ranking.locator("tbody tr").first
        expect(top.get_by_role("link").first).to_have_text("browser-runaway")
        expect(
            page.locator("section.panel")
            .filter(has=page.get_by_role("heading", name="Tools by cost now"))
            .locator("tbody tr")
            .first.get_by_role("link")
            .first
        ).to_have_text("browser.open")

        click(top.get_by_role("link", name="browser-runaway"))  # 1
        expect(page.locator("h1")).to_contain_text("browser-runaway")
        reason = page.get_by_role("textbox", name="Reason")
        click(reason)  # 2 (focusing the box counts, to be strict)
        reason.type("runaway retries of browser.open, vendor bill climbing")
        click(page.get_by_role("button", name="Pause browser-runaway"))  # 3
        expect(page.locator(".messages")).to_contain_text("Agent browser-runaway paused")
        expect(page.locator("h1")).to_contain_text("paused")
        contained_in = time.monotonic() - started
        print(f"\ncontained in {clicks} clicks, {contained_in:.1f} s after the login page")
        self.assertLessEqual(clicks, 3)

        # Let both agents carry on for a while: the runaway's runs stop, new ones are refused.
        time.sleep(2.0)
        refused_before_stop = {o for o in runaway.outcomes if o.startswith("refused:")}
        quiet_runs_before = len(quiet.outcomes)
        time.sleep(1.5)
        runaway.stop()
        quiet.stop()
        self.assertEqual(runaway.errors, [])
        self.assertEqual(quiet.errors, [])

        def after_the_pause() -> dict[str, Any]:
            agent = Agent.objects.get(name="browser-runaway")
            paused_at = agent.disabled_at
            later = ToolCall.objects.filter(created_at__gt=paused_at)
            return {
                "paused": (agent.paused, agent.enabled, agent.disabled_by),
                "runaway_allowed": later.filter(
                    run__agent=agent, tool="browser.open", decision="allow"
                ).count(),
                "runaway_active": Run.objects.filter(
                    agent=agent, status__in=["running", "waiting_approval"]
                ).count(),
                "quiet_enabled": Agent.objects.get(name="support-bot").enabled,
                "quiet_allowed": later.filter(
                    run__agent__name="support-bot", decision="allow"
                ).count(),
                "quiet_not_allowed": later.filter(run__agent__name="support-bot")
                .exclude(decision="allow")
                .count(),
                "quiet_disabled_stops": Run.objects.filter(
                    agent__name="support-bot", stop_reason="agent_disabled"
                ).count(),
            }

        data = orm(after_the_pause)
        self.assertEqual(data["paused"], (True, False, "olga-oncall"))
        self.assertEqual(data["runaway_allowed"], 0, "browser.open was allowed after the pause")
        self.assertEqual(data["runaway_active"], 0)
        self.assertEqual(
            refused_before_stop, {"refused:agent_disabled"}, "a paused agent's run was accepted"
        )
        self.assertTrue(data["quiet_enabled"])
        self.assertGreater(data["quiet_allowed"], 0, "the quiet agent stopped working")
        self.assertEqual(data["quiet_not_allowed"], 0)
        self.assertEqual(data["quiet_disabled_stops"], 0)
        self.assertGreater(len(quiet.outcomes), quiet_runs_before)
        self.assertNotIn("agent_disabled", quiet.outcomes)
