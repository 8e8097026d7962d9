// Minato playground: chat with a model and run the gateway, through Minato's own API only.
// The key is kept in this browser's localStorage and sent in the Authorization header, never in a URL.
'use strict';

const STORE = { key: 'minato.key', model: 'minato.model', session: 'minato.session' };
const PARAMS_STORE = 'minato.params';
const $ = (selector) => document.querySelector(selector);

const state = {
  key: localStorage.getItem(STORE.key) || '',
  chat: null, // the AbortController of the answer being streamed
  countdowns: [], // [{node, deadline}] of the running models
};

// -- talking to Minato --------------------------------------------------------------------------

/** A Minato error, with the sentence to show. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const STATUS_HINTS = {
  401: 'Enter a valid API key above.',
  403: 'This needs a key allowed to do it (an admin key for pulls, loads, unloads and deletes).',
  429: 'Too many requests for this key.',
  503: 'Minato or Ollama is busy or unreachable.',
};

/** Minato's error body ({"detail": "..."} or the validation list) as one readable sentence. */
function describeDetail(detail) {
  if (Array.isArray(detail)) {
    return detail.map((item) => `${(item.loc || []).slice(1).join('.') || 'request'} ${item.msg}`).join('; ');
  }
  return typeof detail === 'string' ? detail : JSON.stringify(detail);
}

async function errorOf(response) {
  let text = '';
  try {
    const body = await response.json();
    text = describeDetail(body.detail !== undefined ? body.detail : body.error);
  } catch {
    text = response.statusText;
  }
  const parts = [`${response.status}: ${text}.`];
  const retry = response.headers.get('Retry-After');
  if (retry) parts.push(`Retry in ${retry} s.`);
  if (STATUS_HINTS[response.status]) parts.push(STATUS_HINTS[response.status]);
  return new ApiError(response.status, parts.join(' '));
}

function headers(extra) {
  const all = { ...extra };
  if (state.key) all.Authorization = `Bearer ${state.key}`;
  return all;
}

/** A path for a model name: each segment encoded, slashes and tags kept readable. */
function modelPath(name) {
  return name.split('/').map((part) => encodeURIComponent(part).replace(/%3A/gi, ':')).join('/');
}

/** fetch with the key; throws an ApiError on any non-2xx answer. */
async function api(method, path, { body, signal, accept = 'application/json' } = {}) {
  const init = { method, headers: headers({ Accept: accept }), signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, `Minato cannot be reached (${error.message}).`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function apiJson(method, path, options) {
  const response = await api(method, path, options);
  return response.status === 204 ? null : response.json();
}

/** Each JSON line of an NDJSON body, as it arrives. */
async function* ndjson(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = (buffered + value).split('\n');
    buffered = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
  }
  if (buffered.trim()) yield JSON.parse(buffered);
}

// -- small view helpers -------------------------------------------------------------------------

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

/** A table cell; ``label`` names its column on a narrow screen, where each row is a card. */
function cell(label, text, props = {}) {
  const node = element('td', { textContent: text, ...props });
  node.dataset.label = label;
  return node;
}

function showError(where, error) {
  const box = $(where);
  if (!error) {
    box.hidden = true;
    box.textContent = '';
    return;
  }
  box.textContent = error instanceof ApiError ? error.message : `Unexpected error: ${error.message}`;
  box.hidden = false;
}

function bytes(size) {
  if (!size) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  const power = Math.min(Math.floor(Math.log(size) / Math.log(1024)), units.length - 1);
  return `${(size / 1024 ** power).toFixed(power ? 1 : 0)} ${units[power]}`;
}

function duration(seconds) {
  if (seconds <= 0) return 'expired';
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, '0');
  return h ? `${h} h ${String(m).padStart(2, '0')} min` : `${m}:${rest}`;
}

// -- the key ------------------------------------------------------------------------------------

function showKeyStatus() {
  $('#key-status').textContent = state.key
    ? 'A key is saved in this browser and sent as "Authorization: Bearer".'
    : 'No key: fine for a Minato without keys on loopback.';
}

$('#key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  state.key = $('#key').value.trim();
  $('#key').value = '';
  if (state.key) localStorage.setItem(STORE.key, state.key);
  else localStorage.removeItem(STORE.key);
  showKeyStatus();
  refreshAll();
});

$('#forget-key').addEventListener('click', () => {
  state.key = '';
  localStorage.removeItem(STORE.key);
  showKeyStatus();
  refreshAll();
});

// -- models and sessions for the chat -----------------------------------------------------------

/** Whether a model can chat: not when Ollama says what it can do and that lacks ``completion``
 * (an embedding model); a model Ollama could not describe is offered, and Minato says if it cannot. */
function canChat(model) {
  const can = model.capabilities || [];
  return can.length === 0 || can.includes('completion');
}

async function refreshModels() {
  const select = $('#model');
  const wanted = select.value || localStorage.getItem(STORE.model);
  try {
    const { models_list: models } = await apiJson('GET', '/models_list/');
    const chat = models.filter(canChat);
    select.replaceChildren(...chat.map((m) => element('option', { value: m.name, textContent: m.name })));
    if (chat.some((m) => m.name === wanted)) select.value = wanted;
    renderModelsTable(models);
  } catch (error) {
    showError('#chat-error', error);
  }
}

$('#model').addEventListener('change', () => localStorage.setItem(STORE.model, $('#model').value));
$('#refresh-models').addEventListener('click', () => refreshModels());

async function refreshSessions() {
  try {
    const page = await apiJson('GET', '/chat?limit=100');
    $('#sessions-count').textContent = `(${page.total})`;
    $('#sessions').replaceChildren(
      ...page.sessions.map((s) => {
        const label = `${s.id} (${s.message_count} messages${s.owner ? `, key ${s.owner}` : ''})`;
        const button = element('button', { type: 'button', className: 'link', textContent: label });
        button.addEventListener('click', () => openSession(s.id, s.owner));
        return element('li', {}, button);
      }),
    );
  } catch (error) {
    showError('#chat-error', error);
  }
}

function newSessionId() {
  const random = new Uint8Array(6);
  crypto.getRandomValues(random);
  return `pg-${Array.from(random, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

function sessionPath(id, owner) {
  const query = owner !== undefined && owner !== null ? `?owner=${encodeURIComponent(owner)}` : '';
  return `/chat/${encodeURIComponent(id)}${query}`;
}

/** Show a stored conversation; with ``owner`` only when an id is ambiguous (an admin's view). */
async function openSession(id, owner) {
  if (!id) return;
  let view;
  try {
    try {
      view = await apiJson('GET', sessionPath(id));
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 409 && owner !== undefined)) throw error;
      view = await apiJson('GET', sessionPath(id, owner));
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      $('#conversation').replaceChildren();
      setSession(id);
      return; // a new conversation: the first message creates it
    }
    showError('#chat-error', error);
    return;
  }
  setSession(id);
  $('#system-prompt').value = view.system_prompt || '';
  $('#conversation').replaceChildren(
    ...view.messages
      .filter((m) => m.role !== 'system')
      .map((m) => {
        const turn = bubble(m.role, m.model);
        turn.answer.textContent = m.content;
        if (m.image_count) turn.note.textContent = `${m.image_count} image(s)`;
        return turn.node;
      }),
  );
  showError('#chat-error', null);
}

function setSession(id) {
  $('#session').value = id;
  if (id) localStorage.setItem(STORE.session, id);
  else localStorage.removeItem(STORE.session);
}

$('#open-session').addEventListener('click', () => openSession($('#session').value.trim()));
$('#new-session').addEventListener('click', () => {
  setSession(newSessionId());
  $('#conversation').replaceChildren();
  $('#system-prompt').value = '';
});
$('#clear-session').addEventListener('click', async () => {
  const id = $('#session').value.trim();
  if (!id) return;
  try {
    await api('DELETE', sessionPath(id));
    $('#conversation').replaceChildren();
    showError('#chat-error', null);
    refreshSessions();
  } catch (error) {
    showError('#chat-error', error);
  }
});

// -- chatting -----------------------------------------------------------------------------------

/** One message in the conversation: the text, a place for thinking, and a note (stats, images). */
function bubble(role, model) {
  const title = element('p', { className: 'who', textContent: role === 'user' ? 'You' : model || 'Model' });
  const thinking = element('details', { className: 'thinking', hidden: true, open: true }, element('summary', { textContent: 'Thinking' }));
  const thought = element('p');
  thinking.append(thought);
  const answer = element('p', { className: 'text' });
  const note = element('p', { className: 'note' });
  const node = element('article', { className: `turn ${role}` }, title, thinking, answer, note);
  return { node, thinking, thought, answer, note };
}

function readParams() {
  const params = {};
  for (const input of document.querySelectorAll('[data-param]')) {
    const raw = input.value.trim();
    if (raw === '') continue;
    const name = input.dataset.param;
    params[name] = input.type === 'number' ? Number(raw) : raw;
  }
  return params;
}

function saveParams() {
  const saved = {};
  for (const input of document.querySelectorAll('[data-param]')) saved[input.dataset.param] = input.value;
  saved.think = $('#think').checked;
  localStorage.setItem(PARAMS_STORE, JSON.stringify(saved));
}

function restoreParams() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(PARAMS_STORE) || '{}');
  } catch {
    saved = {};
  }
  for (const input of document.querySelectorAll('[data-param]')) input.value = saved[input.dataset.param] ?? '';
  $('#think').checked = Boolean(saved.think);
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data: URL, which Minato accepts as base64
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function setStreaming(on) {
  $('#send').disabled = on;
  $('#stop').disabled = !on;
}

async function send() {
  const model = $('#model').value;
  const message = $('#message').value;
  if (!model || !message.trim() || state.chat) return;
  let session = $('#session').value.trim();
  if (!session) {
    session = newSessionId();
  }
  setSession(session);
  saveParams();
  const files = Array.from($('#images').files);
  const body = { message, session, ...readParams() };
  const system = $('#system-prompt').value.trim();
  if (system) body.system_prompt = system;
  if ($('#think').checked) body.think = true;

  const mine = bubble('user');
  mine.answer.textContent = message;
  for (const file of files) mine.note.append(element('img', { src: URL.createObjectURL(file), alt: file.name }));
  const theirs = bubble('assistant', model);
  theirs.node.setAttribute('aria-busy', 'true');
  $('#conversation').append(mine.node, theirs.node);
  $('#message').value = '';
  showError('#chat-error', null);

  const controller = new AbortController();
  state.chat = controller;
  setStreaming(true);
  try {
    if (files.length) body.images = await Promise.all(files.map(readImage));
    $('#images').value = '';
    const response = await api('POST', `/stream/${modelPath(model)}`, {
      body,
      signal: controller.signal,
      accept: 'application/x-ndjson',
    });
    for await (const event of ndjson(response)) {
      if (event.thinking) {
        theirs.thinking.hidden = false;
        theirs.thought.textContent += event.thinking;
      }
      if (event.token) theirs.answer.textContent += event.token;
      if (event.error) throw new ApiError(0, `The stream failed: ${event.error}`);
      if (event.done) {
        const stats = event.stats || {};
        theirs.note.textContent = `${stats.eval_count || 0} tokens, ${(stats.tokens_per_second || 0).toFixed(1)} tokens/s (${event.done_reason})`;
      }
    }
  } catch (error) {
    if (error.name === 'AbortError') {
      theirs.note.textContent = 'Stopped: not kept in the conversation.';
    } else {
      theirs.note.textContent = 'No answer.';
      showError('#chat-error', error);
    }
  } finally {
    theirs.node.removeAttribute('aria-busy');
    state.chat = null;
    setStreaming(false);
    refreshSessions();
    refreshModels(); // an answer loads its model
    refreshRunning();
    document.dispatchEvent(new Event('minato:refresh')); // the usage panel (usage.js)
  }
}

$('#send-form').addEventListener('submit', (event) => {
  event.preventDefault();
  send();
});
$('#message').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
// Closing the stream is what stops Ollama: Minato cancels the generation when its client leaves.
$('#stop').addEventListener('click', () => state.chat && state.chat.abort());

// -- running the gateway ------------------------------------------------------------------------

function actionButton(label, model, run) {
  const button = element('button', { type: 'button', className: 'secondary small', textContent: label });
  button.setAttribute('aria-label', `${label} ${model}`);
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await run();
      showError('#admin-error', null);
    } catch (error) {
      showError('#admin-error', error);
    } finally {
      button.disabled = false;
      refreshModels();
      refreshRunning();
    }
  });
  return button;
}

function renderModelsTable(models) {
  $('#models-table tbody').replaceChildren(
    ...models.map((m) => {
      const path = modelPath(m.name);
      const actions = element(
        'td',
        { className: 'actions' },
        actionButton('Load', m.name, () => api('POST', `/load/${path}`)),
        actionButton('Unload', m.name, () => api('POST', `/unload/${path}`)),
        actionButton('Delete', m.name, async () => {
          if (window.confirm(`Delete ${m.name} from every backend that has it?`)) await api('DELETE', `/models/${path}`);
        }),
      );
      const name = element('th', { scope: 'row', textContent: m.name });
      if (!canChat(m)) name.append(element('span', { className: 'tag', textContent: 'embeddings only' }));
      return element(
        'tr',
        {},
        name,
        cell('Size', bytes(m.size)),
        cell('Loaded', m.loaded ? 'yes' : 'no'),
        cell('Backends', (m.backends || []).join(', ')),
        actions,
      );
    }),
  );
}

async function refreshRunning() {
  try {
    const { running } = await apiJson('GET', '/running');
    const now = Date.now();
    state.countdowns = [];
    $('#running-table tbody').replaceChildren(
      ...running.map((m) => {
        const expires = cell('Expires in', '', { className: 'countdown' });
        if (m.expires_in_seconds === null || m.expires_at === 'forever') {
          expires.textContent = 'never';
        } else {
          state.countdowns.push({ node: expires, deadline: now + m.expires_in_seconds * 1000 });
        }
        return element(
          'tr',
          {},
          element('th', { scope: 'row', textContent: m.name }),
          cell('Memory', bytes(m.size)),
          cell('In VRAM', bytes(m.size_vram)),
          cell('Context', String(m.context_length)),
          cell('Backend', m.backend),
          expires,
        );
      }),
    );
    tick();
  } catch (error) {
    showError('#admin-error', error);
  }
}

let expiredRefresh = null;
function tick() {
  const now = Date.now();
  let expired = false;
  for (const { node, deadline } of state.countdowns) {
    const left = (deadline - now) / 1000;
    node.textContent = duration(left);
    expired ||= left <= 0;
  }
  // Ollama unloads a model once it expires: look again shortly after.
  if (expired && !expiredRefresh) {
    expiredRefresh = setTimeout(() => {
      expiredRefresh = null;
      refreshRunning();
    }, 2000);
  }
}
setInterval(tick, 1000);

$('#refresh-running').addEventListener('click', () => {
  refreshRunning();
  refreshBackends();
});

async function refreshBackends() {
  try {
    const info = await apiJson('GET', '/');
    $('#backends-table tbody').replaceChildren(
      ...(info.ollama.backends || []).map((b) =>
        element(
          'tr',
          {},
          element('th', { scope: 'row', textContent: b.name }),
          cell('State', b.state + (b.reason ? ` (${b.reason})` : '')),
          cell('Version', b.version || ''),
          cell('Installed', String(b.installed || 0)),
          cell('Loaded', (b.loaded || []).join(', ')),
          cell('Generating', String(b.in_flight || 0)),
        ),
      ),
    );
  } catch (error) {
    showError('#admin-error', error);
  }
}

/** Progress of one pull: a bar per layer (per backend, with a pool) and the overall percent. */
function pullView() {
  const layers = new Map();
  $('#pull-layers').replaceChildren();
  $('#pull-progress').hidden = false;
  const overall = $('#pull-overall');
  overall.value = 0;
  $('#pull-percent').textContent = '0%';
  return (line) => {
    $('#pull-status').textContent = (line.backend ? `${line.backend}: ` : '') + line.status;
    if (!line.digest || !line.total) return;
    const key = `${line.backend || ''} ${line.digest}`;
    let layer = layers.get(key);
    if (!layer) {
      const id = `layer-${layers.size}`;
      const name = line.digest.replace(/^sha256:/, '').slice(0, 12) + (line.backend ? ` on ${line.backend}` : '');
      const bar = element('progress', { id, max: 100, value: 0 });
      const label = element('label', { htmlFor: id, textContent: name });
      $('#pull-layers').append(element('li', {}, label, bar));
      layer = { bar, total: line.total, completed: 0 };
      layers.set(key, layer);
    }
    layer.total = line.total;
    layer.completed = line.completed || 0;
    layer.bar.value = (layer.completed / layer.total) * 100;
    let total = 0;
    let completed = 0;
    for (const l of layers.values()) {
      total += l.total;
      completed += l.completed;
    }
    // Layers are announced one after another, so the total grows as the pull goes: the overall
    // percent never goes back, and says 100 only once Minato says the pull succeeded.
    const percent = Math.min(total ? Math.floor((completed / total) * 1000) / 10 : 0, 99.9);
    if (percent > overall.value) {
      overall.value = percent;
      $('#pull-percent').textContent = `${percent}%`;
    }
  };
}

$('#pull-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = $('#pull-name').value.trim();
  if (!name) return;
  $('#pull').disabled = true;
  showError('#admin-error', null);
  try {
    const response = await api('POST', `/install/${modelPath(name)}`, { accept: 'application/x-ndjson' });
    const show = pullView();
    for await (const line of ndjson(response)) {
      if (line.status === 'error') throw new ApiError(0, `The pull failed: ${line.error}`);
      show(line);
      if (line.status === 'success' && !line.backend) {
        $('#pull-overall').value = 100;
        $('#pull-percent').textContent = '100%';
        $('#pull-status').textContent = `${name} is installed.`;
      }
    }
  } catch (error) {
    showError('#admin-error', error);
  } finally {
    $('#pull').disabled = false;
    refreshModels();
    refreshBackends();
  }
});

// -- start --------------------------------------------------------------------------------------

function refreshAll() {
  showError('#chat-error', null);
  showError('#admin-error', null);
  refreshModels();
  refreshSessions();
  refreshRunning();
  refreshBackends();
  document.dispatchEvent(new Event('minato:refresh'));
}

restoreParams();
showKeyStatus();
refreshAll();
const remembered = localStorage.getItem(STORE.session);
if (remembered) openSession(remembered);
