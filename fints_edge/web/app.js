// fints-edge web app: plain JS, no build step. Talks to the same server that serves it.
'use strict';

const $ = (id) => document.getElementById(id);
const store = {
  get token() { return localStorage.getItem('fints.token') || ''; },
  set token(v) { v ? localStorage.setItem('fints.token', v) : localStorage.removeItem('fints.token'); },
  get user() { return localStorage.getItem('fints.user') || ''; },
  set user(v) { localStorage.setItem('fints.user', v); },
};

// A token in the address (#token=...) signs the app in; the fragment never reaches the server.
if (location.hash.startsWith('#token=')) {
  store.token = decodeURIComponent(location.hash.slice(7));
  history.replaceState(null, '', location.pathname + location.search);
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(path, {method = 'GET', json, form, signal} = {}) {
  const headers = {Authorization: 'Bearer ' + store.token};
  let body;
  if (json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(json); }
  if (form) body = form;
  const res = await fetch(path, {method, headers, body, signal});
  if (res.status === 401) { askToken(); throw new ApiError('the server wants its token', 401); }
  if (!res.ok) throw new ApiError(await errorText(res), res.status);
  return res;
}

async function errorText(res) {
  try { return (await res.json()).error.message; } catch { return res.status + ' ' + res.statusText; }
}

function say(text, isError = false) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('error', isError);
}

function askToken() {
  const d = $('token-dialog');
  if (!d.open) d.showModal();
}

function knobs(steer) {
  const f = {steer};
  for (const [id, parse] of [['k', parseInt], ['strength', parseFloat], ['rag', parseInt]]) {
    const v = $(id).value.trim();
    if (v !== '') f[id] = parse(v, 10);
  }
  return f;
}

// Stream one answer (server-sent events); onPiece gets the text so far. Returns {text, fints}.
async function streamAnswer(text, steer, onPiece) {
  const res = await api('/v1/chat/completions', {
    method: 'POST',
    json: {messages: [{role: 'user', content: text}], user: store.user || undefined,
           stream: true, fints: knobs(steer)},
  });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '', out = '', info = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') return {text: out, fints: info};
        const obj = JSON.parse(data);
        if (obj.error) throw new ApiError(obj.error.message, 500);
        const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
        if (delta && delta.content) { out += delta.content; onPiece(out); }
        if (obj.fints) info = obj.fints;
      }
    }
  }
  return {text: out, fints: info};
}

// -- the conversation --------------------------------------------------------------------------
const exchanges = [];  // {input, steered, answer, learned, el}

async function send(text) {
  $('hint').hidden = true;
  const el = $('exchange-tpl').content.firstElementChild.cloneNode(true);
  el.querySelector('.you').textContent = text;
  const ex = {input: text, steered: $('steer').checked, compare: $('compare').checked,
              answer: '', learned: null, el};
  exchanges.push(ex);
  el.classList.toggle('compare', ex.compare);
  el.classList.toggle('plain', !ex.steered && !ex.compare);
  $('log').append(el);
  wire(ex);
  const started = performance.now();
  const show = (cls) => (t) => { el.querySelector(`.${cls} .text`).textContent = t; scrollDown(); };
  say('answering...');
  $('send').disabled = true;
  try {
    if (ex.compare) {
      // Both at once: the server queues them; each is exactly what it would be alone.
      const [base, steered] = await Promise.all([
        streamAnswer(text, false, show('unsteered')),
        streamAnswer(text, true, show('steered')),
      ]);
      ex.answer = steered.text; ex.steered = true; ex.base = base.text;
      meta(ex, steered.fints, started);
    } else {
      const r = await streamAnswer(text, ex.steered, show(ex.steered ? 'steered' : 'unsteered'));
      ex.answer = r.text;
      meta(ex, r.fints, started);
    }
    say('');
  } catch (e) {
    el.querySelector('.meta').textContent = 'error: ' + e.message;
    say(e.message, true);
  } finally {
    $('send').disabled = false;
  }
}

function meta(ex, info, started) {
  const secs = ((performance.now() - started) / 1000).toFixed(1);
  const parts = [`${secs} s`];
  if (info) {
    parts.push(info.steered ? `steered by ${info.retrieved.length} items (K ${info.k}, strength ${info.strength})` : 'not steered');
  }
  ex.el.querySelector('.meta').textContent = parts.join(' · ');
  ex.el.querySelector('[data-act="good"]').disabled = !ex.steered;
  ex.el.querySelector('[data-act="good"]').title = ex.steered ? '' : 'an unsteered answer is the model\'s own: nothing personal to learn';
}

function wire(ex) {
  const el = ex.el;
  const wantForm = el.querySelector('form.want');
  el.querySelector('[data-act="why"]').onclick = () => showWhy(ex.input);
  el.querySelector('[data-act="want"]').onclick = () => {
    wantForm.hidden = false;
    const area = wantForm.querySelector('textarea');
    area.value = ex.answer;
    area.focus();
  };
  el.querySelector('[data-act="cancel-want"]').onclick = () => { wantForm.hidden = true; };
  wantForm.onsubmit = async (ev) => {
    ev.preventDefault();
    const wanted = wantForm.querySelector('textarea').value.trim();
    if (!wanted) return;
    // The answer shown is the contrast: "for this input I wanted this, not that".
    const rejected = ex.answer && ex.answer !== wanted ? ex.answer : undefined;
    if (await learn(ex, {input: ex.input, output: wanted, rejected})) wantForm.hidden = true;
  };
  el.querySelector('[data-act="good"]').onclick = () => learn(ex, {input: ex.input, output: ex.answer});
  el.querySelector('[data-act="forget"]').onclick = async () => {
    if (ex.learned === null) return;
    await forget(ex.learned);
  };
}

async function learn(ex, item) {
  if (!item.output) { say('no answer to learn from yet', true); return false; }
  say('learning...');
  try {
    const r = await (await api(`/v1/profiles/${encodeURIComponent(store.user)}/items`, {method: 'POST', json: item})).json();
    ex.learned = r.id;
    ex.el.querySelector('[data-act="forget"]').disabled = false;
    ex.el.querySelector('.meta').textContent += ` · learned as item #${r.id}`;
    say(`learned item #${r.id}; ${r.items} items now`);
    loadProfiles();
    return true;
  } catch (e) { say(e.message, true); return false; }
}

async function forget(id) {
  say('forgetting...');
  try {
    const r = await (await api(`/v1/profiles/${encodeURIComponent(store.user)}/items/${id}`, {method: 'DELETE'})).json();
    // Ids after the forgotten one move down by one.
    for (const ex of exchanges) {
      if (ex.learned === null) continue;
      if (ex.learned === id) { ex.learned = null; ex.el.querySelector('[data-act="forget"]').disabled = true; }
      else if (ex.learned > id) ex.learned -= 1;
    }
    say(`forgot item #${id}; ${r.items} items left`);
    loadProfiles();
    if (!$('why').hidden && lastWhy) showWhy(lastWhy);
  } catch (e) { say(e.message, true); }
}

let lastWhy = null;
async function showWhy(input) {
  lastWhy = input;
  const sheet = $('why');
  sheet.hidden = false;
  $('why-summary').textContent = 'looking...';
  $('why-items').replaceChildren();
  try {
    const f = knobs(true);
    delete f.steer;
    const r = await (await api(`/v1/profiles/${encodeURIComponent(store.user)}/why`, {method: 'POST', json: {input, fints: f}})).json();
    $('why-summary').textContent = `profile "${r.user}", top ${r.k} of its history for this input (gate ${r.gate.toFixed(2)}, ${(r.timings_ms.encode + r.timings_ms.retrieve).toFixed(1)} ms):`;
    for (const it of r.retrieved) {
      const li = document.createElement('li');
      li.className = 'why-item';
      const head = document.createElement('div');
      head.className = 'why-head';
      head.textContent = `#${it.id} · similarity ${it.similarity.toFixed(3)} · weight ${it.weight.toFixed(3)}`;
      const btn = document.createElement('button');
      btn.type = 'button'; btn.textContent = 'forget'; btn.className = 'small secondary';
      btn.onclick = () => forget(it.id);
      head.append(btn);
      const inp = document.createElement('p'); inp.className = 'why-in'; inp.textContent = it.input;
      const out = document.createElement('p'); out.className = 'why-out'; out.textContent = '→ ' + it.output;
      li.append(head, inp, out);
      $('why-items').append(li);
    }
  } catch (e) { $('why-summary').textContent = 'error: ' + e.message; }
}

function scrollDown() { $('log').scrollTop = $('log').scrollHeight; }

// -- profiles ----------------------------------------------------------------------------------
async function loadProfiles() {
  let r;
  try { r = await (await api('/v1/profiles')).json(); } catch (e) { say(e.message, true); return; }
  const sel = $('user');
  const names = r.data.map((p) => p.name);
  sel.replaceChildren(...names.map((n) => new Option(n, n)));
  if (!names.includes(store.user)) store.user = r.default_user || names[0] || '';
  sel.value = store.user;
  $('profiles').replaceChildren(...r.data.map((p) => {
    const li = document.createElement('li');
    li.textContent = p.error ? `${p.name}: ${p.error}` : `${p.name}: ${p.items} items, layers ${p.layers.join(', ')}`
      + (p.calibration ? `; setting: ${p.calibration.label}` : '');
    return li;
  }));
  if (!names.length) say('no profile yet: build one in settings from a history file');
  else if ($('status').classList.contains('error')) say('');
}

async function loadDefaults() {  // the server's knobs, shown where the fields are left empty
  try {
    const d = (await (await api('/health')).json()).defaults;
    for (const id of ['k', 'strength', 'rag']) $(id).placeholder = `server default: ${d[id]}`;
  } catch { /* loadProfiles reports errors */ }
}

async function upload(ev) {
  ev.preventDefault();
  const form = new FormData();
  form.append('name', $('up-name').value.trim());
  form.append('history', $('up-file').files[0]);
  form.append('calibrate', $('up-calibrate').checked ? '1' : '0');
  const bar = $('up-progress');
  try {
    let job = (await (await api('/v1/profiles', {method: 'POST', form})).json()).job;
    bar.hidden = false;
    while (job.state === 'queued' || job.state === 'running') {
      bar.value = job.progress;
      $('up-status').textContent = `${job.state}: ${job.phase} (${job.done}/${job.total})`;
      await new Promise((ok) => setTimeout(ok, 1000));
      job = await (await api(`/v1/jobs/${job.id}`)).json();
    }
    bar.value = job.state === 'done' ? 1 : bar.value;
    $('up-status').textContent = job.state === 'done'
      ? `built "${job.user}": ${job.result.items} items (${job.result.dropped} dropped) in ${job.result.seconds} s`
        + (job.result.calibration ? `; ${job.result.calibration.summary || job.result.calibration.label}` : '')
        + (job.result.calibration_error ? `; not calibrated: ${job.result.calibration_error}` : '')
      : `${job.state}: ${job.error || ''}`;
    if (job.state === 'done') { store.user = job.user; await loadProfiles(); }
  } catch (e) { $('up-status').textContent = 'error: ' + e.message; }
}

// -- start ---------------------------------------------------------------------------------------
function start() {
  $('composer').onsubmit = (ev) => {
    ev.preventDefault();
    const text = $('input').value.trim();
    if (!text) return;
    $('input').value = '';
    send(text);
  };
  $('input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); $('composer').requestSubmit(); }
  });
  $('user').onchange = () => { store.user = $('user').value; say(`profile "${store.user}"`); };
  $('open-settings').onclick = () => { $('settings').hidden = false; loadProfiles(); loadDefaults(); };
  for (const b of document.querySelectorAll('[data-close]')) b.onclick = () => { $(b.dataset.close).hidden = true; };
  $('upload').onsubmit = upload;
  $('forget-token').onclick = () => { store.token = ''; askToken(); };
  $('token-form').onsubmit = () => { store.token = $('token').value.trim(); $('token').value = ''; loadProfiles(); };
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch(() => {});
  loadProfiles();  // a 401 asks for the token (none is needed with --no-auth)
}

start();
