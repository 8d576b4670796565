// The sidebar's quick actions: list the patient's open care tickets and open a new one through the JSON API.
// The launch handle is in the URLs and the CSRF token in a data attribute: no cookie is needed.
"use strict";
(function () {
  const card = document.getElementById("follow-ups");
  if (!card) { return; }
  const list = document.getElementById("ticket-list");
  const form = document.getElementById("ticket-form");
  const message = document.getElementById("ticket-message");
  const headers = { "Content-Type": "application/json", "X-CSRF-Token": card.dataset.token };

  function show(tickets) {
    list.replaceChildren();
    if (tickets === null || tickets.length === 0) {  // null: the EHR granted this user no reading of Tasks
      const empty = document.createElement("li");
      empty.className = tickets === null ? "muted not-granted" : "muted";
      empty.textContent = tickets === null ? "Care tickets: not granted by the EHR." : "No open care tickets.";
      list.append(empty);
      return;
    }
    for (const ticket of tickets) {
      const item = document.createElement("li");
      item.className = "ticket";
      item.dataset.status = ticket.status;
      item.textContent = `${ticket.priority === "urgent" ? "URGENT · " : ""}${ticket.description} ` +
        `(due ${ticket.due_day}, ${ticket.status.replace("_", " ")})`;
      list.append(item);
    }
  }

  async function load() {
    const response = await fetch(card.dataset.api, { credentials: "omit" });
    if (response.ok) { show((await response.json()).tickets); }
    else { list.textContent = "Care tickets are unavailable right now."; }
  }

  if (form) form.addEventListener("submit", async (event) => {  // no form where the EHR granted no Task writes
    event.preventDefault();
    const body = {
      reason: form.elements.reason.value,
      description: form.elements.description.value,
      priority: form.elements.urgent.checked ? "urgent" : "routine",
      // one key per submit: a resent request opens nothing new (randomUUID needs a secure context)
      key: window.crypto && crypto.randomUUID ? `sidebar/${crypto.randomUUID()}` : undefined,
    };
    form.elements["ticket-open"].disabled = true;
    try {
      const response = await fetch(card.dataset.tickets, {
        method: "POST", headers, body: JSON.stringify(body), credentials: "omit",
      });
      const answer = await response.json();
      if (response.ok) {
        message.textContent = "Care ticket opened; it will appear in the EHR as a Task.";
        form.elements.description.value = "";
        await load();
      } else {
        message.textContent = answer.message || "The care ticket could not be opened.";
      }
    } finally {
      form.elements["ticket-open"].disabled = false;
    }
  });
  load();
})();
