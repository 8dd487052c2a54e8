// Routing and spend: spend charts from /v1/usage, weights, decisions, experiments, breakers.
"use strict";

Spine.start(async (who) => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#1f5fa8", "#b3261e", "#1b7f3b", "#8a4fbf", "#c25e00", "#00798c", "#6b7280", "#a3195b"];
  const charts = {};
  window.spineCharts = charts; // the tests read what was drawn
  const drawable = typeof window.Chart === "function";

  if (who.reads_other_tenants) {
    // An operator key may read another tenant's spend and decisions (the API's tenant=).
    const select = $("tenant");
    select.append(
      Spine.el("option", { value: "", text: `${who.tenant} (this key's)` }),
      Spine.el("option", { value: "*", text: "All tenants" }),
    );
    try {
      const tenants = await Spine.api("/v1/tenants", { params: { limit: 200 } });
      for (const tenant of tenants.data) {
        if (tenant.name !== who.tenant) select.append(Spine.el("option", { value: tenant.name, text: tenant.name }));
      }
    } catch (error) {
      Spine.report(error);
    }
    select.hidden = false;
    $("tenant-label").hidden = false;
    $("scope-note").textContent =
      "Spend and decisions may be read for another tenant with this operator key; weights are shared by all tenants; experiments are this key's tenant's.";
  }

  function tenant() {
    return $("tenant").value || undefined;
  }

  function days(count) {
    const out = [];
    const today = new Date();
    for (let back = count - 1; back >= 0; back -= 1) {
      const day = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - back));
      out.push(day.toISOString().slice(0, 10));
    }
    return out;
  }

  function draw(name, config) {
    if (!drawable) return;
    if (charts[name]) charts[name].destroy();
    charts[name] = new window.Chart($("chart-" + name), config);
  }

  function table(id, head, lines) {
    const tbody = $(id);
    tbody.replaceChildren(
      Spine.el("tr", null, ...head.map((text) => Spine.el("th", { scope: "col", text }))),
      ...lines.map((cells) => Spine.row(...cells)),
    );
  }

  async function spend() {
    const count = Number($("days").value);
    const axis = days(count);
    const since = axis[0];
    const all = tenant() === "*";
    const [byDay, byGroup] = await Promise.all([
      Spine.api("/v1/usage", { params: { group_by: "day,model", since, tenant: tenant() } }),
      Spine.api("/v1/usage", { params: { group_by: all ? "tenant" : "model", since, tenant: tenant() } }),
    ]);
    const models = [...new Set(byDay.data.map((r) => r.model))].sort();
    const datasets = models.map((model, index) => ({
      label: model,
      backgroundColor: PALETTE[index % PALETTE.length],
      data: axis.map((day) =>
        byDay.data.filter((r) => r.model === model && r.day === day).reduce((sum, r) => sum + Number(r.cost), 0),
      ),
    }));
    draw("day", {
      type: "bar",
      data: { labels: axis.map((d) => d.slice(5)), datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: "USD" } } },
        plugins: { legend: { position: "bottom" } },
      },
    });
    table(
      "table-day",
      ["Day", "Model", "Calls", "Tokens in", "Tokens out", "Cost (USD)"],
      byDay.data.map((r) => [r.day, r.model, r.calls, r.input_tokens, r.output_tokens, r.cost]),
    );
    const key = all ? "tenant" : "model";
    $("by-group-title").textContent = all ? "Spend per tenant (USD)" : "Spend per model (USD)";
    draw("group", {
      type: "bar",
      data: {
        labels: byGroup.data.map((r) => r[key]),
        datasets: [
          { label: "Cost (USD)", backgroundColor: PALETTE[0], data: byGroup.data.map((r) => Number(r.cost)) },
          { label: "Calls", backgroundColor: PALETTE[2], data: byGroup.data.map((r) => r.calls), yAxisID: "calls" },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        indexAxis: "x",
        scales: {
          y: { beginAtZero: true, title: { display: true, text: "USD" } },
          calls: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "calls" } },
        },
        plugins: { legend: { position: "bottom" } },
      },
    });
    table(
      "table-group",
      [all ? "Tenant" : "Model", "Calls", "Errors", "Cache hits", "Cost (USD)"],
      byGroup.data.map((r) => [r[key], r.calls, r.errors, r.cache_hits, r.cost]),
    );
    const total = byDay.total;
    $("spend-total").textContent = `Total over ${count} days: ${total.cost} USD, ${total.calls} calls, ${total.input_tokens} tokens in, ${total.output_tokens} out, ${total.errors} errors.`;
  }

  async function weights() {
    const view = await Spine.api("/v1/routing/weights");
    $("weights-version").textContent = view.version === null ? "(not learned yet)" : `(version ${view.version}, ${view.events} observations)`;
    const fmt = (value, digits) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));
    if (!view.models.length) return Spine.emptyRow($("weights"), 5, "No weights yet: the learner has not run.");
    $("weights").replaceChildren(
      ...view.models.map((m) =>
        Spine.row(m.model, m.quality === null ? "—" : `${fmt(m.quality, 2)} ± ${fmt(m.quality_sd, 2)}`, m.observations, fmt(m.latency_ms, 0), fmt(m.cost, 6)),
      ),
    );
  }

  async function decisions() {
    const page = await Spine.api("/v1/routing/decisions", { params: { limit: 20, tenant: tenant() } });
    if (!page.data.length) return Spine.emptyRow($("decisions"), 8, "No routed call yet.");
    $("decisions").replaceChildren(
      ...page.data.map((d) =>
        Spine.row(
          Spine.time(d.time),
          d.strategy || "—",
          d.model,
          d.fallback_path.join(" → ") || "—",
          d.outcome,
          Math.round(d.latency_ms),
          d.cost,
          d.arm || "—",
        ),
      ),
    );
  }

  async function experiments() {
    const list = await Spine.api("/v1/experiments");
    const box = $("experiments");
    if (!list.data.length) {
      box.replaceChildren(Spine.el("p", { class: "muted", text: "No experiment." }));
      return;
    }
    const reports = await Promise.all(list.data.slice(0, 10).map((e) => Spine.api("/v1/experiments/" + encodeURIComponent(e.id))));
    const ci = (pair, digits) => (pair ? `[${pair[0].toFixed(digits)}, ${pair[1].toFixed(digits)}]` : "");
    const mean = (value, digits) => (value === null ? "—" : value.toFixed(digits));
    box.replaceChildren(
      ...reports.map((report) => {
        const e = report.experiment;
        const verdict = report.significant ? `best arm ${report.best_arm} (p = ${report.p_value.toFixed(3)})` : "no significant difference yet";
        const body = Spine.el("tbody");
        for (const arm of report.arms) {
          body.append(
            Spine.row(arm.arm, arm.calls, arm.errors, `${mean(arm.quality_mean, 2)} ${ci(arm.quality_ci, 2)}`, `${mean(arm.cost_mean, 6)} ${ci(arm.cost_ci, 6)}`, mean(arm.latency_ms_mean, 0)),
          );
        }
        return Spine.el(
          "article",
          { class: "experiment" },
          Spine.el("h3", null, `${e.name} `, Spine.badge(e.status)),
          Spine.el("p", { class: "hint", text: `${e.scope.kind} · started ${Spine.time(e.created_at)} · ${verdict}` }),
          Spine.el(
            "table",
            { class: "compact" },
            Spine.el("thead", null, Spine.el("tr", null, ...["Arm", "Calls", "Errors", "Quality (95% CI)", "Cost (95% CI)", "Latency (ms)"].map((t) => Spine.el("th", { scope: "col", text: t })))),
            body,
          ),
        );
      }),
    );
  }

  async function breakers() {
    const [list, ready] = await Promise.all([
      Spine.api("/ui/api/breakers"),
      fetch("/readyz", { cache: "no-store" }).then((r) => r.json()),
    ]);
    if (!list.data.length) Spine.emptyRow($("breakers"), 5, "No model in the catalog.");
    else
      $("breakers").replaceChildren(
        ...list.data.map((b) => Spine.row(b.model, b.kind, Spine.badge(b.state), b.failures, b.state === "open" ? b.retry_in : "—")),
      );
    $("services").replaceChildren(
      ...Object.entries(ready.services || {}).map(([name, state]) => Spine.el("li", null, `${name}: `, Spine.badge(state))),
    );
  }

  async function all() {
    const results = await Promise.allSettled([spend(), weights(), decisions(), experiments(), breakers()]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) Spine.report(failed.reason);
  }

  $("spend-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    all();
  });
  if (!drawable) Spine.status("Charts cannot be drawn (the chart library is not installed); the tables below each chart hold the numbers.");
  await all();
});
