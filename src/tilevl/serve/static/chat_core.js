// tilevl chat page, the part without a DOM: the server's limits and defaults become the
// settings' bounds, a request is built within them, and a finished turn updates the history.
// chat.js uses it in the browser; tests/serve/test_web.py runs it under node as well.
"use strict";

(function (root) {
  // Page defaults where the server states none (an older server without /health limits).
  const FALLBACK = { max_tiles: 1, max_tokens: 256, temperature: 0, top_p: 1 };
  const PAGE_MAX_TOKENS = 256;  // a chat reply; the server's own default is its limit

  // health: the JSON of GET /health. Returns the bounds and start values of each setting.
  function pageSettings(health) {
    const limits = (health && health.limits) || {};
    const defaults = (health && health.defaults) || {};
    const maxTiles = limits.max_tiles_per_image || null;
    const maxTokens = limits.max_tokens || null;
    return {
      maxTiles: { min: 1, max: maxTiles, value: defaults.max_tiles || Math.min(FALLBACK.max_tiles, maxTiles || 1) },
      maxTokens: { min: 1, max: maxTokens, value: Math.min(PAGE_MAX_TOKENS, maxTokens || PAGE_MAX_TOKENS) },
      temperature: { min: 0, max: 2, value: defaults.temperature ?? FALLBACK.temperature },
      topP: { min: 0.01, max: 1, value: defaults.top_p ?? FALLBACK.top_p },
      maxImages: limits.max_images_per_request || null,
    };
  }

  // A number typed into a setting, kept inside [min, max]; not a number: the fallback.
  function clamp(raw, bound, integer) {
    let v = typeof raw === "number" ? raw : parseFloat(raw);
    if (!Number.isFinite(v)) v = bound.value;
    if (integer) v = Math.round(v);
    if (bound.min != null) v = Math.max(bound.min, v);
    if (bound.max != null) v = Math.min(bound.max, v);
    return v;
  }

  // The body of POST /v1/chat/completions. form: the raw values of the settings fields.
  function buildRequest(model, history, form, settings) {
    const messages = [];
    const system = (form.system || "").trim();
    if (system) messages.push({ role: "system", content: system });
    return {
      model,
      messages: messages.concat(history),
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: clamp(form.maxTokens, settings.maxTokens, true),
      temperature: clamp(form.temperature, settings.temperature, false),
      top_p: clamp(form.topP, settings.topP, false),
      max_tiles: clamp(form.maxTiles, settings.maxTiles, true),  // tilevl's extension
      // InternVL3.5's thinking mode, as vLLM takes it; the thinking streams as reasoning_content.
      chat_template_kwargs: { enable_thinking: !!form.thinking },
    };
  }

  // The history after a turn. outcome: "done" | "stopped" | "error". A turn that failed
  // (a bad image, a refused request) leaves no trace, so it cannot poison later turns;
  // a stopped one keeps its partial reply, which the next turn follows.
  function afterTurn(history, userMessage, reply, outcome) {
    if (outcome === "error") return history.slice();
    return history.concat([userMessage, { role: "assistant", content: reply }]);
  }

  const api = { pageSettings, clamp, buildRequest, afterTurn };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.chatCore = api;
})(typeof window !== "undefined" ? window : globalThis);
