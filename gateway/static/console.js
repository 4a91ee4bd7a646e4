// Live progress of a deprovisioning run: polls the run's JSON once a second and redraws the steps and receipts
// until the run has finished. Text only (textContent), never HTML: receipts carry vendors' words.
"use strict";

(function () {
  const root = document.getElementById("progress");
  if (!root) {
    return;
  }
  const source = root.dataset.src;
  const STEP_FIELDS = ["channel", "step", "state", "attempts", "detail", "vendor_reference"];
  const RECEIPT_FIELDS = ["time", "channel", "step", "attempt", "state", "detail", "vendor_reference"];

  function row(values, className) {
    const tr = document.createElement("tr");
    if (className) {
      tr.className = className;
    }
    for (const value of values) {
      const td = document.createElement("td");
      td.textContent = value === null || value === undefined ? "" : String(value);
      tr.appendChild(td);
    }
    return tr;
  }

  function redraw(progress) {
    const state = document.getElementById("run-state");
    state.textContent = progress.run.state;
    state.className = "state-" + progress.run.state;
    const steps = root.querySelector("#steps tbody");
    steps.replaceChildren(
      ...progress.steps.map((s) => {
        const tr = row(STEP_FIELDS.map((f) => s[f]), "state-" + s.state);
        tr.children[2].className = "state";
        return tr;
      })
    );
    const receipts = document.getElementById("receipts");
    receipts.replaceChildren(
      ...progress.receipts.map((r) => row(RECEIPT_FIELDS.map((f) => (f === "step" ? r.step || r.kind : r[f]))))
    );
    const note = document.getElementById("superseded-note");
    note.hidden = !progress.superseded;
    document.getElementById("carried-out").textContent = progress.carried_out.length
      ? progress.carried_out
          .map((c) => c.channel + " " + c.step + (c.vendor_reference ? " (" + c.vendor_reference + ")" : ""))
          .join(", ")
      : "nothing";
    root.dataset.finished = progress.finished ? "yes" : "no";
    const retry = document.getElementById("retry-form");
    if (retry) {
      retry.hidden = !(progress.finished && progress.trouble);
    }
    document.getElementById("live").textContent = progress.finished
      ? "Finished."
      : "Live: this page updates as the channels answer.";
  }

  async function poll() {
    try {
      const response = await fetch(source, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        const progress = await response.json();
        redraw(progress);
        if (progress.finished) {
          return;
        }
      }
    } catch (error) {
      document.getElementById("live").textContent = "Connection lost; retrying…";
    }
    window.setTimeout(poll, 1000);
  }

  if (root.dataset.finished !== "yes") {
    window.setTimeout(poll, 500);
  }
})();
