// kfgate chat widget: speaks kfgate.v1.json (spec/websocket.md) to the
// instance that served this page, i.e. the page's own path minus "/widget".
//
// What survives what:
//   - a dropped connection: the socket is reopened with backoff; hello carries
//     resume_from = the last seq seen, so replies sent meanwhile arrive from
//     the journal; messages without an ack are sent again with the same id,
//     which the server deduplicates (W14), so nothing is lost or doubled;
//   - a reload of the tab: last seq, unacked messages and the transcript are
//     kept in sessionStorage (per tab: another tab has its own position);
//   - a new tab: the anonymous conversation id is kept in localStorage, so
//     every tab of this browser joins the same conversation.
// Query parameters: token=<visitor token minted by the tenant's back end>,
// name=<display label for the visitor's own lines> (cosmetic only).
(function () {
  'use strict';

  var PROTOCOL = 'kfgate.v1.json';
  var BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 30000;
  var TRANSCRIPT_MAX = 200;          // lines kept for a reload
  var TYPING_SEND_EVERY_MS = 3000;   // at most one typing event per period
  var TYPING_SHOW_MS = 6000;         // the peer's "typing" fades after this
  var READ_DEBOUNCE_MS = 1000;

  var params = new URLSearchParams(location.search);
  var token = params.get('token') || '';
  var base = location.pathname.replace(/\/widget\/?$/, '') || '/';
  var wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + base;
  var ns = 'kfg:' + base + ':';      // storage key prefix, one per instance

  var $ = function (id) { return document.getElementById(id); };
  var logEl = $('kfg-log'), form = $('kfg-form'), input = $('kfg-input');
  var statusEl = $('kfg-status'), typingEl = $('kfg-typing');

  // -- storage (every access guarded: private modes may refuse storage)
  function load(store, key, dflt) {
    try {
      var v = store.getItem(ns + key);
      return v === null ? dflt : JSON.parse(v);
    } catch (e) { return dflt; }
  }
  function save(store, key, v) {
    try { store.setItem(ns + key, JSON.stringify(v)); } catch (e) { /* quota: keep going */ }
  }

  function randomId(bytes) {
    var b = new Uint8Array(bytes);
    crypto.getRandomValues(b);
    return btoa(String.fromCharCode.apply(null, b))
      .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  // Anonymous visitors name their conversation themselves: 128 random bits,
  // kept so that a later visit (or another tab) resumes it. With a token the
  // token decides, and the server says which in welcome.
  var conversation = token ? '' : load(localStorage, 'anon', '');
  if (!token && !/^anon:[A-Za-z0-9_-]{16,128}$/.test(conversation)) {
    conversation = 'anon:' + randomId(16);
    save(localStorage, 'anon', conversation);
  }
  // Position and unacked messages belong to a conversation. A token's
  // payload names it (signed, not secret: spec §4), and the back end may mint
  // a fresh token for every page view, so the token itself is no key.
  function tokenConversation(t) {
    try {
      var p = JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
      return String(p.conv || p.sub || '');
    } catch (e) { return ''; }
  }
  var scope = (token ? 'tok:' + (tokenConversation(token) || token) : conversation) + ':';

  var lastSeq = load(sessionStorage, scope + 'seq', null);       // null: live only
  var pending = load(sessionStorage, scope + 'pending', []);     // [{id, text}] not acked
  var transcript = load(sessionStorage, scope + 'transcript', []);
  var idPrefix = randomId(6) + '-', idCounter = 0;

  var ws = null, open = false, backoff = BACKOFF_MIN_MS, timer = null, stopped = false;
  var lines = {};                    // client id -> status element of that line
  var stats = { connects: 0, welcomes: 0, acks: 0, duplicates: 0, received: 0 };
  var lastTypingSent = 0, typingTimer = null, readTimer = null, readSent = lastSeq || 0;

  function setStatus(text) { statusEl.textContent = text; }

  // -- transcript
  function addLine(who, text, cls, id) {
    var li = document.createElement('li');
    li.className = 'kfg-' + cls;
    var w = document.createElement('span');
    w.className = 'kfg-who';
    w.textContent = who;
    var t = document.createElement('span');
    t.className = 'kfg-text';
    t.textContent = text;
    li.appendChild(w);
    li.appendChild(t);
    if (id) {
      var st = document.createElement('span');
      st.className = 'kfg-state';
      li.appendChild(st);
      li.setAttribute('data-id', id);
      lines[id] = st;
    }
    logEl.appendChild(li);
    logEl.scrollTop = logEl.scrollHeight;
    return li;
  }
  function remember(entry) {
    transcript.push(entry);
    if (transcript.length > TRANSCRIPT_MAX) transcript.splice(0, transcript.length - TRANSCRIPT_MAX);
    save(sessionStorage, scope + 'transcript', transcript);
  }
  function markState(id, text, cls) {
    var st = lines[id];
    if (!st) return;
    st.textContent = text;
    st.parentNode.className = st.parentNode.className.replace(/ kfg-(sent|failed)/g, '') +
      (cls ? ' kfg-' + cls : '');
    transcript.forEach(function (e) { if (e.id === id) e.state = cls || ''; });
    save(sessionStorage, scope + 'transcript', transcript);
  }
  var STATE_TEXT = { sent: '✓', failed: 'not sent' };
  transcript.forEach(function (e) {
    addLine(e.who, e.text, e.cls, e.id);
    if (e.id && e.state) markState(e.id, STATE_TEXT[e.state] || '', e.state);
    else if (e.id) markState(e.id, 'sending…', '');
  });

  // -- socket
  function send(obj) {
    if (!ws || !open) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  function connect() {
    timer = null;
    if (stopped) return;
    stats.connects++;
    setStatus('connecting…');
    var s;
    try {
      s = new WebSocket(wsUrl, PROTOCOL);
    } catch (e) {
      return retry('cannot connect: ' + e.message);
    }
    ws = s;
    s.onopen = function () {
      if (ws !== s) return;
      var hello = { type: 'hello' };
      if (token) hello.token = token;
      else hello.conversation = conversation;
      if (lastSeq !== null) hello.resume_from = lastSeq;
      s.send(JSON.stringify(hello));
    };
    s.onmessage = function (ev) {
      if (ws !== s) return;
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (f && typeof f.type === 'string') onFrame(f);
    };
    s.onclose = function (ev) {
      if (ws !== s) return;
      ws = null;
      open = false;
      onClosed(ev.code, ev.reason);
    };
  }

  // Codes after which trying again cannot help: the visitor needs a new
  // token or the instance refuses them (spec/websocket.md §10).
  var FATAL = { 4001: 'the visitor token is invalid', 4002: 'the visitor token has expired',
                4003: 'this conversation is not allowed here' };

  function onClosed(code, reason) {
    if (FATAL[code]) {
      stopped = true;
      setStatus('disconnected: ' + FATAL[code]);
      input.disabled = true;
      return;
    }
    retry('reconnecting' + (code ? ' (' + code + (reason ? ' ' + reason : '') + ')' : '') + '…');
  }

  function retry(why) {
    if (stopped || timer) return;
    // Full jitter: many widgets dropped at once must not return in step.
    var wait = Math.floor(Math.random() * backoff);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    setStatus(why);
    timer = setTimeout(connect, wait);
  }

  function flushPending() {
    pending.forEach(function (m) { send({ type: 'message', id: m.id, text: m.text }); });
  }

  function onFrame(f) {
    switch (f.type) {
    case 'welcome':
      open = true;
      stats.welcomes++;
      backoff = BACKOFF_MIN_MS;
      if (typeof f.conversation === 'string') conversation = f.conversation;
      setStatus(f.resume ? 'catching up…' : 'connected');
      flushPending();
      break;
    case 'resumed':
      setStatus('connected');
      if (f.truncated) {
        // More was missed than one replay carries: ask again from here.
        ws.close(1000, 'resume more');
      }
      break;
    case 'ack':
      onAck(f);
      break;
    case 'message':
    case 'typing':
    case 'event':
      onOutbound(f);
      break;
    case 'error':
      onError(f);
      break;
    default:
      break;   // W10: unknown frames are ignored
    }
  }

  function dropPending(id) {
    pending = pending.filter(function (m) { return m.id !== id; });
    save(sessionStorage, scope + 'pending', pending);
  }

  function onAck(f) {
    if (typeof f.id !== 'string') return;
    stats.acks++;
    if (f.duplicate) stats.duplicates++;
    dropPending(f.id);
    if (f.dropped) markState(f.id, 'not delivered' + (f.reason ? ': ' + f.reason : ''), 'failed');
    else markState(f.id, '✓', 'sent');
  }

  function onError(f) {
    var id = typeof f.id === 'string' ? f.id : null;
    var retriable = { rate_limited: 1, unavailable: 1, internal: 1 };
    if (id && retriable[f.code]) {
      var wait = typeof f.retry_after_ms === 'number' ? f.retry_after_ms : 1000;
      setTimeout(function () {
        pending.forEach(function (m) {
          if (m.id === id) send({ type: 'message', id: m.id, text: m.text });
        });
      }, Math.max(wait, 100));
      return;
    }
    if (id) {
      dropPending(id);
      markState(id, 'not sent: ' + (f.detail || f.code), 'failed');
    }
    if (!id && f.code) setStatus('error: ' + (f.detail || f.code));
  }

  function outboundText(f) {
    if (typeof f.text === 'string') return f.text;
    var out = [];
    (Array.isArray(f.parts) ? f.parts : []).forEach(function (p) {
      if (p && typeof p.text === 'string') out.push(p.text);
      else if (p && typeof p.url === 'string') out.push((p.title || p.name || p.kind) + ': ' + p.url);
      else if (p && p.kind === 'location') out.push('location: ' + p.lat + ',' + p.lon);
    });
    return out.join('\n');
  }

  function onOutbound(f) {
    // The server never repeats a seq on one connection; across reconnects
    // and reloads this check keeps the transcript free of doubles anyway.
    if (typeof f.seq === 'number') {
      if (lastSeq !== null && f.seq <= lastSeq) return;
      lastSeq = f.seq;
      save(sessionStorage, scope + 'seq', lastSeq);
    }
    stats.received++;
    if (f.type === 'typing') {
      typingEl.textContent = ((f.sender && f.sender.name) || 'agent') + ' is typing…';
      clearTimeout(typingTimer);
      typingTimer = setTimeout(function () { typingEl.textContent = ''; }, TYPING_SHOW_MS);
      return;
    }
    if (f.type === 'event') return;
    typingEl.textContent = '';
    var who = (f.sender && (f.sender.name || f.sender.id)) || 'agent';
    var text = outboundText(f);
    addLine(who, text, 'in');
    remember({ who: who, text: text, cls: 'in' });
    scheduleRead();
  }

  function scheduleRead() {
    if (readTimer || document.visibilityState === 'hidden') return;
    readTimer = setTimeout(function () {
      readTimer = null;
      if (lastSeq !== null && lastSeq > readSent && send({ type: 'event', name: 'read', seq: lastSeq }))
        readSent = lastSeq;
    }, READ_DEBOUNCE_MS);
  }

  // -- the form
  function submit(text) {
    text = text.trim();
    if (!text) return null;
    var id = idPrefix + (++idCounter);
    pending.push({ id: id, text: text });
    save(sessionStorage, scope + 'pending', pending);
    addLine('you', text, 'out', id);
    remember({ who: 'you', text: text, cls: 'out', id: id });
    markState(id, 'sending…', '');
    send({ type: 'message', id: id, text: text });   // offline: sent after the next welcome
    return id;
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    submit(input.value);
    input.value = '';
    input.focus();
  });
  input.addEventListener('keydown', function (ev) {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  input.addEventListener('input', function () {
    var now = Date.now();
    if (input.value && now - lastTypingSent > TYPING_SEND_EVERY_MS && send({ type: 'event', name: 'typing' }))
      lastTypingSent = now;
  });
  document.addEventListener('visibilitychange', scheduleRead);
  // Back online: try now instead of waiting out the backoff.
  window.addEventListener('online', function () {
    if (!ws && timer && !stopped) { clearTimeout(timer); timer = null; connect(); }
  });

  // For tests and for embedding pages: a small handle, nothing secret in it.
  window.kfgWidget = {
    send: submit,
    // Drops the connection the way a network failure would look to the
    // widget: it reconnects with backoff and resumes.
    dropConnection: function () { if (ws) ws.close(4000, 'dropped'); },
    state: function () {
      return { connected: open, conversation: conversation, lastSeq: lastSeq,
               pending: pending.map(function (m) { return m.id; }), stats: stats };
    },
  };

  connect();
})();
