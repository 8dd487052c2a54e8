// Events: the key's recent events with their status, and the dead-lettered ones with reasons.
"use strict";

Spine.start(async () => {
  const $ = (id) => document.getElementById(id);
  // A cursor belongs to the filter it was read with: "Show more" goes on with that filter,
  // whatever the form reads now, until "Show" applies the form.
  let shown = form();
  let cursor = null;

  function form() {
    return { status: $("status").value, type: $("type").value.trim() };
  }

  function pending() {
    const now = form();
    $("filters-pending").hidden = now.status === shown.status && now.type === shown.type;
  }

  const mappings = new Map(); // event type -> what its mapping writes (null: no mapping)

  async function learn(types) {
    const unknown = [...new Set(types)].filter((type) => !mappings.has(type));
    if (!unknown.length) return;
    const found = await Spine.api("/ui/api/mappings", { params: { type: unknown.slice(0, 50) } });
    for (const [type, view] of Object.entries(found.data)) mappings.set(type, view);
  }

  function mapping(type) {
    const view = mappings.get(type);
    if (view === undefined) return "";
    if (view === null) return "none";
    return `${view.labels.join(", ")}${view.types.length ? " · " + view.types.join(", ") : ""}`;
  }

  async function recent({ append }) {
    const page = await Spine.api("/v1/events", { params: { ...shown, limit: 50, cursor } });
    await learn(page.data.map((e) => e.type)).catch(Spine.report);
    const rows = page.data.map((e) => {
      const line = Spine.row(Spine.time(e.received_at), e.type, e.source, e.subject || "", Spine.badge(e.status), e.attempts, mapping(e.type));
      if (e.reason) line.title = e.reason;
      return line;
    });
    if (append) $("event-rows").append(...rows);
    else if (rows.length) $("event-rows").replaceChildren(...rows);
    else Spine.emptyRow($("event-rows"), 7, "No event.");
    cursor = page.next_cursor;
    $("more").hidden = !cursor;
  }

  async function deadLetters() {
    const page = await Spine.api("/v1/events", { params: { status: "dead_lettered", limit: 50 } });
    if (!page.data.length) return Spine.emptyRow($("dlq-rows"), 5, "No dead letter.");
    $("dlq-rows").replaceChildren(
      ...page.data.map((e) => Spine.row(Spine.time(e.received_at), e.type, e.source, e.attempts, e.reason || "")),
    );
  }

  $("event-filters").addEventListener("input", pending);
  $("event-filters").addEventListener("change", pending);
  $("event-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    shown = form();
    cursor = null;
    pending();
    recent({ append: false }).catch(Spine.report);
  });
  $("more").addEventListener("click", () => recent({ append: true }).catch(Spine.report));
  await Promise.all([recent({ append: false }), deadLetters()]);
});
