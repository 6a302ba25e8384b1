// tilevl chat page: keeps the conversation as OpenAI messages and streams replies from
// /v1/chat/completions (stream=true), the same endpoint any OpenAI client uses. The rules
// without a DOM (limits, request, history) are in chat_core.js.
"use strict";

const $ = (id) => document.getElementById(id);
const core = window.chatCore;
const state = { model: null, history: [], images: [], controller: null, settings: core.pageSettings(null),
                conversation: 0 };  // conversation: bumped by Clear, so a late turn lands nowhere

function setStatus(text) { $("status").textContent = text; }

function addMessage(role, text, images) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.dataset.role = role;
  for (const url of images || []) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "uploaded image";
    div.appendChild(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function onImagesChosen() {
  const files = Array.from($("images").files || []);
  for (const file of files) state.images.push(await readFile(file));
  $("images").value = "";
  const previews = $("previews");
  previews.textContent = "";
  for (const url of state.images) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "image to send";
    previews.appendChild(img);
  }
  setStatus(state.images.length + " image(s) will go with the next message");
}

function formValues() {
  return { system: $("system").value, maxTokens: $("max-tokens").value, temperature: $("temperature").value,
           topP: $("top-p").value, maxTiles: $("max-tiles").value,
           thinking: $("thinking").checked };
}

function buildRequest(history) {
  return core.buildRequest(state.model, history, formValues(), state.settings);
}

// Bounds and start values of the settings fields, from the server's /health.
function applySettings(settings) {
  state.settings = settings;
  const fields = { "max-tiles": settings.maxTiles, "max-tokens": settings.maxTokens,
                   "temperature": settings.temperature, "top-p": settings.topP };
  for (const [id, bound] of Object.entries(fields)) {
    const input = $(id);
    input.value = bound.value;
    if (bound.min != null) input.min = bound.min;
    if (bound.max != null) input.max = bound.max; else input.removeAttribute("max");
  }
}

// Parse server-sent events from a fetch body; calls onData with each JSON payload.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(event) {
  if (event) event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text && state.images.length === 0) return;
  if (state.controller) return;  // one reply at a time
  const content = state.images.map((url) => ({ type: "image_url", image_url: { url } }));
  if (text) content.push({ type: "text", text });
  const userBubble = addMessage("user", text, state.images);
  const userMessage = { role: "user", content };
  const conversation = state.conversation;
  state.images = [];
  $("previews").textContent = "";
  $("prompt").value = "";

  const bubble = addMessage("assistant", "");
  bubble.dataset.state = "streaming";
  const out = bubble.querySelector(".text");
  const thinking = document.createElement("details");  // the reply's thinking, folded
  thinking.className = "thinking";
  thinking.dataset.testid = "thinking-text";
  thinking.appendChild(document.createElement("summary")).textContent = "thinking";
  const thought = thinking.appendChild(document.createElement("div"));
  bubble.insertBefore(thinking, out);
  let reply = "", reasoning = "";
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(buildRequest(state.history.concat([userMessage]))),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    let usage = null;
    await readEvents(response, (data) => {
      if (data.error) throw new Error(data.error.message);
      if (data.usage) usage = data.usage;
      for (const choice of data.choices || []) {
        if (choice.delta && choice.delta.reasoning_content) {
          reasoning += choice.delta.reasoning_content;
          thought.textContent = reasoning;
          thinking.dataset.filled = "true";
        }
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          out.textContent = reply;
          $("log").scrollTop = $("log").scrollHeight;
        }
      }
    });
    if (!reply) out.textContent = reasoning ? "(no answer after the thinking)" : "(empty reply)";
    bubble.dataset.state = "done";
    setStatus(usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} reply tokens` : "done");
  } catch (err) {
    bubble.dataset.state = err.name === "AbortError" ? "stopped" : "error";
    if (err.name !== "AbortError") {
      bubble.classList.add("error");
      out.textContent = (reply ? reply + "\n" : "") + "Error: " + err.message +
        " (this turn is left out of the conversation)";
      userBubble.dataset.state = "failed";
      userBubble.classList.add("failed");
      if (!$("prompt").value) $("prompt").value = text;  // to edit and send again
    }
    setStatus(err.name === "AbortError" ? "stopped" : "error");
  } finally {
    // A stopped reply (even a partial one) stays, so the next turn follows it; a failed
    // turn is dropped, so a bad image cannot break every later message. The thinking
    // stays in <think> tags, as upstream's chat() keeps replies in its history.
    const whole = reasoning ? `<think>\n${reasoning}\n</think>\n\n${reply}` : reply;
    if (conversation === state.conversation) {
      state.history = core.afterTurn(state.history, userMessage, whole, bubble.dataset.state);
    }
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

function clearChat() {
  if (state.controller) state.controller.abort();
  state.conversation += 1;
  state.history = [];
  state.images = [];
  $("log").textContent = "";
  $("previews").textContent = "";
  setStatus("cleared");
}

async function init() {
  $("composer").addEventListener("submit", send);
  $("images").addEventListener("change", onImagesChosen);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", clearChat);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) send(e);
  });
  try {
    const health = await (await fetch("/health")).json();
    applySettings(core.pageSettings(health));
    const models = await (await fetch("/v1/models")).json();
    state.model = models.data[0].id;
    $("model-name").textContent = state.model;
    document.body.dataset.ready = "true";
  } catch (err) {
    setStatus("cannot reach the server: " + err.message);
  }
}

init();
