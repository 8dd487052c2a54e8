// One task: its summary, its timeline live over SSE, approval buttons, its result and cost.
"use strict";

Spine.start(async () => {
  const $ = (id) => document.getElementById(id);
  const taskId = $("task-page").dataset.taskId;
  const base = "/v1/tasks/" + encodeURIComponent(taskId);
  const ENDED = new Set(["succeeded", "failed", "cancelled", "dead_lettered"]);
  let lastSeq = 0;
  let streaming = null; // the timeline item that collects a model's streamed text

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
    $("task-cost").textContent = `${calls.cost} USD · ${calls.input_tokens} tokens in, ${calls.output_tokens} out · ${calls.calls.length} model calls`;
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
    if (event.type === "state") return event.state + (event.attempt ? ` (attempt ${event.attempt})` : "");
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
    const text = JSON.stringify(rest);
    return text.length > 300 ? text.slice(0, 300) + "…" : text;
  }

  function onEvent(event) {
    lastSeq = Math.max(lastSeq, event.seq || 0);
    if (event.type === "delta") {
      if (!streaming) {
        streaming = Spine.el("span", { class: "streamed" });
        $("timeline").append(item(event, streaming));
      }
      streaming.textContent += event.text || "";
      return;
    }
    streaming = null;
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

  async function follow() {
    $("live").textContent = "(live)";
    for (let attempt = 0; attempt < 5; attempt += 1) {
      try {
        await Spine.follow(`${base}/events?after=${lastSeq}`, onEvent);
        break;
      } catch (error) {
        Spine.report(error);
        await new Promise((resolve) => setTimeout(resolve, 1000 * (attempt + 1)));
      }
    }
    $("live").textContent = "(ended)";
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
