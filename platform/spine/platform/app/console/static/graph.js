// The graph explorer: search, draw a neighbourhood, expand by clicking, filter, inspect a node.
"use strict";

Spine.start(async () => {
  const $ = (id) => document.getElementById(id);
  const drawable = typeof window.cytoscape === "function";
  const drawn = new Map(); // node id -> node (as the API gave it)
  const links = new Map(); // edge id -> edge (as the API gave it)
  const MAX_FIT_ZOOM = 1.6; // a small neighbourhood is not blown up until its labels collide
  let cy = null;

  if (drawable) {
    cy = window.cytoscape({
      container: $("cy"),
      wheelSensitivity: 0.3,
      style: [
        {
          selector: "node",
          style: {
            label: "data(label)",
            "background-color": "#1f5fa8",
            color: "#111",
            "font-size": 11,
            "text-valign": "bottom",
            "text-margin-y": 4,
            "text-wrap": "ellipsis",
            "text-max-width": 120,
            width: 22,
            height: 22,
          },
        },
        { selector: "node.focus", style: { "background-color": "#b3261e", width: 30, height: 30 } },
        { selector: "node:selected", style: { "border-width": 4, "border-color": "#f2b705" } },
        {
          selector: "edge",
          style: {
            label: "data(type)",
            width: 1.5,
            "line-color": "#6b7280",
            "target-arrow-color": "#6b7280",
            "target-arrow-shape": "triangle",
            "curve-style": "bezier",
            "font-size": 9,
            color: "#374151",
            "text-rotation": "autorotate",
            "text-background-color": "#fff",
            "text-background-opacity": 1,
          },
        },
      ],
    });
    // The tests and curious people can reach the drawing.
    window.spineGraph = cy;
    cy.on("tap", "node", (event) => select(event.target.id(), { expand: true }));
  } else {
    $("cy").replaceChildren(
      Spine.el("p", {
        class: "notice",
        text: "The graph drawing library is not installed; the nodes and relationships are listed below.",
      }),
    );
    $("cy").classList.add("cy-absent");
    for (const id of ["drawn-nodes", "drawn-edges"]) $(id).open = true;
  }

  function filters() {
    const types = [...document.querySelectorAll("#types input:checked")].map((box) => box.value);
    const at = $("at").value;
    return {
      types: types.join(","),
      depth: $("depth").value,
      at: at ? new Date(at + "Z").toISOString() : "",
    };
  }

  function title(node) {
    const props = node.properties || {};
    return String(props.name || props.title || props.label || node.id);
  }

  function add(view) {
    const fresh = [];
    for (const node of view.nodes) {
      if (!drawn.has(node.id)) fresh.push(node.id);
      drawn.set(node.id, node);
      if (cy && cy.getElementById(node.id).empty()) {
        cy.add({ group: "nodes", data: { id: node.id, label: title(node) } });
      }
    }
    for (const edge of view.edges) {
      links.set(edge.id, edge);
      if (cy && cy.getElementById("e:" + edge.id).empty()) {
        cy.add({
          group: "edges",
          data: { id: "e:" + edge.id, source: edge.source, target: edge.target, type: edge.type },
        });
      }
    }
    if (cy) {
      const layout = cy.layout({ name: "cose", animate: false, randomize: false, fit: true, padding: 30 });
      layout.one("layoutstop", () => {
        if (cy.zoom() > MAX_FIT_ZOOM) {
          cy.zoom(MAX_FIT_ZOOM);
          cy.center();
        }
      });
      layout.run();
    }
    list();
    return fresh;
  }

  function name(id) {
    const node = drawn.get(id);
    return node ? `${title(node)} (${id})` : id;
  }

  function list() {
    $("edge-count").textContent = String(links.size);
    const rows = [...links.values()].map((edge) => Spine.row(name(edge.source), edge.type, name(edge.target)));
    if (rows.length) $("edges").replaceChildren(...rows);
    else Spine.emptyRow($("edges"), 3, "No relationship drawn.");
    $("node-count").textContent = String(drawn.size);
    $("graph-empty").hidden = drawn.size > 0;
    $("drawn").replaceChildren(
      ...[...drawn.values()].map((node) =>
        Spine.el(
          "li",
          null,
          Spine.el("button", {
            type: "button",
            class: "link",
            text: `${title(node)} (${node.id})`,
            onclick: () => select(node.id, { expand: true }),
          }),
        ),
      ),
    );
  }

  async function draw(id) {
    drawn.clear();
    links.clear();
    if (cy) cy.elements().remove();
    $("focus").textContent = "of " + id;
    await select(id, { expand: true });
  }

  async function select(id, { expand }) {
    try {
      if (expand) {
        const view = await Spine.api(`/v1/graph/nodes/${encodeURIComponent(id)}/neighbors`, {
          params: filters(),
        });
        const fresh = add(view);
        const count = Math.max(0, view.nodes.length - 1);
        const neighbours = `${count} ${count === 1 ? "neighbour" : "neighbours"}`;
        // The API caps a neighbourhood; where it says it did, the count is not the whole.
        const capped = view.truncated === true;
        $("capped").hidden = !capped;
        $("capped").textContent = capped
          ? `${id} has more neighbours than the ${count} drawn: narrow the filters (types, hops) to see others.`
          : "";
        const shown = capped ? `the first ${neighbours} of more (the rest are not drawn)` : neighbours;
        Spine.status(`${id}: ${shown}, ${fresh.length} new on the drawing.`);
      }
      if (cy) {
        cy.nodes().removeClass("focus");
        cy.getElementById(id).addClass("focus");
      }
      await details(id);
    } catch (error) {
      Spine.report(error);
    }
  }

  async function details(id) {
    const node = drawn.get(id) || (await Spine.api(`/v1/graph/nodes/${encodeURIComponent(id)}`));
    $("node-title").textContent = `Node ${id}`;
    $("node-none").hidden = true;
    const props = $("node-props");
    props.replaceChildren(Spine.el("dt", { text: "labels" }), Spine.el("dd", { text: (node.labels || []).join(", ") }));
    for (const [name, value] of Object.entries(node.properties || {}).sort()) {
      props.append(
        Spine.el("dt", { text: name }),
        Spine.el("dd", { text: typeof value === "object" ? JSON.stringify(value) : String(value) }),
      );
    }
    const tbody = $("node-events");
    Spine.emptyRow(tbody, 2, "Loading…");
    const written = await Spine.api(`/ui/api/graph/nodes/${encodeURIComponent(id)}/events`);
    if (!written.data.length) {
      Spine.emptyRow(tbody, 2, written.missing.length ? "Its events are no longer in the log." : "None found.");
      return;
    }
    tbody.replaceChildren(
      ...written.data.map((entry) => {
        const what = Spine.el("span", null, entry.type, Spine.el("small", { text: Spine.time(entry.received_at) }));
        const line = Spine.row(what, Spine.badge(entry.status));
        line.title = `${entry.source} · ${entry.event_id || ""}`;
        return line;
      }),
    );
  }

  async function search(event) {
    event.preventDefault();
    const found = await Spine.api("/v1/graph/search", {
      params: { q: $("q").value, label: $("label").value, limit: 20 },
    });
    const matches = $("matches");
    if (!found.nodes.length) {
      matches.replaceChildren(Spine.el("li", { class: "muted", text: "No match." }));
      return;
    }
    matches.replaceChildren(
      ...found.nodes.map((node) =>
        Spine.el(
          "li",
          null,
          Spine.el("button", {
            type: "button",
            class: "link",
            text: `${title(node)} (${node.id})`,
            onclick: () => draw(node.id),
          }),
        ),
      ),
    );
    if (found.nodes.length === 1) await draw(found.nodes[0].id);
    else matches.querySelector("button").focus();
  }

  $("search-form").addEventListener("submit", (event) => search(event).catch(Spine.report));
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const focus = cy ? cy.nodes(".focus").first() : null;
    const id = focus && focus.length ? focus.id() : [...drawn.keys()][0];
    if (id) draw(id);
  });

  try {
    const schema = await Spine.api("/ui/api/graph/schema");
    for (const label of schema.labels) $("label").append(Spine.el("option", { value: label, text: label }));
    for (const type of schema.types) {
      const box = Spine.el("input", { type: "checkbox", id: "type-" + type, value: type });
      $("types").append(Spine.el("div", { class: "check" }, box, Spine.el("label", { for: "type-" + type, text: type })));
    }
    if (!schema.labels.length) {
      Spine.status("No graph mappings are configured (GENAI_KNOWLEDGE__MAPPINGS_DIR): the graph is empty.");
    }
  } catch (error) {
    Spine.report(error);
  }
  const start = new URLSearchParams(location.search).get("node");
  if (start) await draw(start);
});
