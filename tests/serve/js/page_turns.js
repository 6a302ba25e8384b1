// Drives chat_core.js (the chat page without its DOM) against a live server, as the page
// does: limits from /health, requests with the page's defaults, a failed turn, a next turn.
// Usage: node page_turns.js CHAT_CORE_JS SERVER_URL; prints one JSON line of what happened.
"use strict";

const core = require(process.argv[2]);
const url = process.argv[3];

async function ask(model, history, settings) {
  const body = core.buildRequest(model, history, {
    system: "", maxTiles: settings.maxTiles.value, maxTokens: 4,
    temperature: settings.temperature.value, topP: settings.topP.value,
  }, settings);
  const response = await fetch(url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const text = await response.text();
  const failed = !response.ok || text.includes('"error"');
  let reply = "";
  for (const line of text.split("\n")) {
    if (!line.startsWith("data: {")) continue;
    for (const choice of JSON.parse(line.slice(6)).choices || []) reply += (choice.delta || {}).content || "";
  }
  return { status: response.status, failed, reply, sent: body };
}

(async () => {
  const health = await (await fetch(url + "/health")).json();
  const settings = core.pageSettings(health);
  const model = (await (await fetch(url + "/v1/models")).json()).data[0].id;
  let history = [];
  const turns = [];
  const messages = [
    { role: "user", content: [{ type: "text", text: "Hello" }] },
    { role: "user", content: [{ type: "image_url", image_url: { url: "data:image/png;base64,bm90IGFuIGltYWdl" } },
                              { type: "text", text: "What is this?" }] },
    { role: "user", content: [{ type: "text", text: "And now?" }] },
  ];
  for (const message of messages) {
    const turn = await ask(model, history.concat([message]), settings);
    history = core.afterTurn(history, message, turn.reply, turn.failed ? "error" : "done");
    turns.push({ status: turn.status, failed: turn.failed, max_tiles: turn.sent.max_tiles,
                 users: turn.sent.messages.filter((m) => m.role === "user").length });
  }
  console.log(JSON.stringify({ settings, turns, history_length: history.length }));
})().catch((err) => { console.error(err); process.exit(1); });
