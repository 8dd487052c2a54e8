// One task: its summary, its timeline live over SSE, approval buttons, its result and cost.
"use strict";

Spine.start(async () => {
  const $ = (id) => document.getElementById(id);
  const taskId = $("task-page").dataset.taskId;
  const base = "/v1/tasks/" + encodeURIComponent(taskId);
  const ENDED = new Set(["succeeded", "failed", "cancelled", "dead_lettered"]);
  let lastSeq = 0;
  let streaming = null; // the timeline item that collects a model's streamed text
  let reconnecting = false; // the status bar says the feed is being resumed
  let finalSeen = false; // the feed brought the task's final state

  function render(task) {
    const state = $("task-state");
    state.replaceWith(Object.assign(Spine.badge(task.state), { id: "task-state" }));
    $("task-agent").textContent = task.agent;
    $("task-created").textContent = Spine.time(task.created_at);
    $("task-attempts").textContent = String(task.attempts);
    $("task-input").textContent = JSON.stringify(task.input, null, 2);
    if (task.result) {
      $("task-result").textContent =
        typeof task.result.text === "string" ? task.result.text : JSON.stringify(task.result, null, 2);
    } else if (task.error) {
      $("task-result").textContent = `${task.error.type}: ${task.error.message}`;
    }
    const waiting = task.state === "waiting_approval" && task.approval;
    $("approval").hidden = !waiting;
    if (waiting) {
      $("approval-tool").textContent = task.approval.tool || "";
      let args = task.approval.arguments;
      try {
        args = JSON.stringify(typeof args === "string" ? JSON.parse(args) : args, null, 2);
      } catch (_) {
        args = String(args);
      }
      $("approval-args").textContent = args;
    }
  }

  async function refresh() {
    const task = await Spine.api(base);
    render(task);
    return task;
  }

  async function cost() {
    const calls = await Spine.api(`/ui/api/tasks/${encodeURIComponent(taskId)}/calls`);
    const count = calls.calls.length;
    $("task-cost").textContent =
      `${calls.cost} USD · ${calls.input_tokens} tokens in, ${calls.output_tokens} out · ` +
      `${count} model ${count === 1 ? "call" : "calls"}`;
    if (!calls.calls.length) {
      Spine.emptyRow($("task-calls"), 4, "No model call yet.");
      return;
    }
    $("task-calls").replaceChildren(
      ...calls.calls.map((call) =>
        Spine.row(call.model, call.outcome, `${call.input_tokens} / ${call.output_tokens}`, call.cost),
      ),
    );
  }

  function summary(event) {
    const skip = new Set(["seq", "type", "at"]);
    const rest = Object.fromEntries(Object.entries(event).filter(([name]) => !skip.has(name)));
    if (event.type === "state") return stateSummary(event);
    if (event.type === "cancel_requested") return "cancellation requested";
    if (event.type === "tool_call_started") {
      const args = typeof event.arguments === "string" ? event.arguments : JSON.stringify(event.arguments ?? {});
      return `${event.tool || event.name || "tool"} ${args}`;
    }
    if (event.type === "approval_requested") return `asks to call ${event.tool}`;
    if (event.type === "model_call") {
      const tools = (event.tool_calls || []).length ? ` · asks for ${event.tool_calls.join(", ")}` : "";
      return `${event.model} (${event.provider}) · ${event.input_tokens} in / ${event.output_tokens} out · ${event.cost_usd} USD${tools}`;
    }
    if (event.type === "tool_call_finished") {
      return `${event.tool} → ${event.ok ? "ok" : "failed"}: ${event.ok ? event.result : JSON.stringify(event.error)}`;
    }
    if (event.type === "final") return typeof event.text === "string" ? event.text : JSON.stringify(rest);
    if (!Object.keys(rest).length) return "";
    const text = JSON.stringify(rest);
    return text.length > 300 ? text.slice(0, 300) + "…" : text;
  }

  // A state change, with why an attempt ended and when the next one starts (a retry).
  function stateSummary(event) {
    let text = event.state + (event.attempt ? ` (attempt ${event.attempt})` : "");
    const error = event.error;
    if (error && typeof error === "object") {
      const why = [error.type, error.message].filter((part) => part).join(": ");
      if (why) text += ` · ${why}`;
    } else if (error) {
      text += ` · ${error}`;
    }
    const wait = Number(event.retry_in);
    if (event.retry_in !== undefined && event.retry_in !== null && Number.isFinite(wait)) {
      text += ` · retry in ${wait < 10 ? Math.round(wait * 10) / 10 : Math.round(wait)} s`;
    }
    return text;
  }

  function onEvent(event) {
    lastSeq = Math.max(lastSeq, event.seq || 0);
    if (reconnecting) {
      reconnecting = false;
      Spine.status("Reconnected to the live feed.");
    }
    if (event.type === "delta") {
      if (!streaming) {
        streaming = Spine.el("span", { class: "streamed" });
        $("timeline").append(item(event, streaming));
      }
      streaming.textContent += event.text || "";
      return;
    }
    streaming = null;
    if (event.type === "state" && ENDED.has(event.state)) finalSeen = true;
    $("timeline").append(item(event, summary(event)));
    if (event.type === "state" || event.type === "approval_requested" || event.type === "final") {
      refresh().catch(Spine.report);
    }
  }

  function item(event, body) {
    return Spine.el(
      "li",
      { class: "event event-" + String(event.type).replace(/[^a-z_]/g, ""), "data-type": event.type },
      Spine.el("time", { datetime: event.at, text: Spine.time(event.at) }),
      Spine.el("strong", { text: event.type }),
      Spine.el("span", null, body),
    );
  }

  // Follow the feed until the task ends. A stream can close before the end (the API restarted,
  // a proxy timed out, the network dropped): the task is read again and, until the feed has
  // brought its final state, the feed is resumed after the last event seen, with a growing
  // pause between tries that bring nothing.
  async function follow() {
    let failures = 0;
    let endedBefore = false; // the task had ended before this try began
    $("live").textContent = "(live)";
    for (;;) {
      const before = lastSeq;
      let problem = null;
      try {
        await Spine.follow(`${base}/events?after=${lastSeq}`, onEvent);
      } catch (error) {
        problem = error;
      }
      // The feed of an ended task replays what is left and closes: nothing more will come.
      if (finalSeen || (endedBefore && !problem)) break;
      let task = null;
      try {
        task = await refresh();
      } catch (error) {
        problem = problem || error;
      }
      if (problem instanceof Spine.ApiError && [400, 403, 404].includes(problem.status)) {
        $("live").textContent = "(stopped)";
        Spine.report(problem);
        return;
      }
      if (task && ENDED.has(task.state) && !endedBefore) {
        endedBefore = true;
        continue; // read the feed's last events at once
      }
      failures = lastSeq > before ? 1 : failures + 1;
      const seconds = Math.min(30, 2 ** (failures - 1));
      $("live").textContent = "(reconnecting…)";
      const why = problem ? ` (${problem.message})` : "";
      Spine.status(`The live feed was interrupted${why}; reconnecting in ${seconds} s…`);
      reconnecting = true;
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      $("live").textContent = "(live)";
    }
    $("live").textContent = "(ended)";
    if (reconnecting) Spine.status("");
    reconnecting = false;
    await refresh();
    await cost();
  }

  async function decide(verdict) {
    const reason = $("reason").value.trim();
    for (const id of ["approve", "reject"]) $(id).disabled = true;
    try {
      await Spine.api(`${base}/${verdict}`, { method: "POST", body: reason ? { reason } : {} });
      Spine.status(verdict === "approve" ? "Approved: the task goes on." : "Rejected: the model is told why.");
      $("reason").value = "";
      await refresh();
    } catch (error) {
      Spine.report(error);
    } finally {
      for (const id of ["approve", "reject"]) $(id).disabled = false;
    }
  }

  $("approve").addEventListener("click", () => decide("approve"));
  $("reject").addEventListener("click", () => decide("reject"));

  const task = await refresh();
  await cost();
  if (ENDED.has(task.state)) {
    // The feed replays from the start and ends at once for an ended task.
    await follow();
  } else {
    follow().catch(Spine.report);
  }
});
