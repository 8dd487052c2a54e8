// The task list: filters and pages of the key's tasks, newest first.
"use strict";

Spine.start(async () => {
  const $ = (id) => document.getElementById(id);
  // A cursor belongs to the filter it was read with: "Show more" goes on with that filter,
  // whatever the form reads now, until "Show" applies the form.
  let shown = form();
  let cursor = null;

  function form() {
    return { state: $("state").value, agent: $("agent").value.trim() };
  }

  function pending() {
    const now = form();
    $("filters-pending").hidden = now.state === shown.state && now.agent === shown.agent;
  }

  async function load({ append }) {
    const page = await Spine.api("/v1/tasks", { params: { ...shown, limit: 25, cursor } });
    const rows = page.data.map((task) =>
      Spine.row(
        Spine.el("a", { href: "/ui/tasks/" + encodeURIComponent(task.id) }, Spine.el("code", { text: task.id })),
        task.agent,
        Spine.badge(task.state),
        Spine.time(task.created_at),
        Spine.time(task.updated_at),
      ),
    );
    if (append) $("task-rows").append(...rows);
    else if (rows.length) $("task-rows").replaceChildren(...rows);
    else Spine.emptyRow($("task-rows"), 5, "No task.");
    cursor = page.next_cursor;
    $("more").hidden = !cursor;
  }

  $("task-filters").addEventListener("input", pending);
  $("task-filters").addEventListener("change", pending);
  $("task-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    shown = form();
    cursor = null;
    pending();
    load({ append: false }).catch(Spine.report);
  });
  $("more").addEventListener("click", () => load({ append: true }).catch(Spine.report));
  await load({ append: false });
});
