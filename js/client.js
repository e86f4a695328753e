/*! martd browser client. https://github.com/martd/martd_asgi (MIT)
 *
 *   var handle = martd.sub("channel", function (payload, etag, meta) {}, etag);
 *   handle.cancel();
 *   martd.pub("channel", key, data, {size: 20, event: "chat"}).then(...);
 *   martd.on("missed" | "kicked" | "deleted" | "state" | "error", function (detail) {});
 *   martd.on("join" | "leave", function (who) {});  // who: {channel, cid, user}
 *   martd.presence("channel").then(function (clients) {});
 *   martd.config({transport: "jsonp", share: false, credentials: true});
 *
 * Without an etag a subscription starts where this tab last left the channel
 * (sessionStorage), else at "0" (everything retained); false starts from now.
 *
 * Plain ES5 so that it runs as it is in old browsers; client.mjs imports it as
 * an ES module. Every subscription of a page (and of every tab of the same
 * origin, where the browser has Web Locks and BroadcastChannel) shares one
 * connection: one tab leads and relays what it receives to the others.
 */
(function (root, factory) {
  var martd = factory(root);
  if (typeof module === "object" && module && module.exports) module.exports = martd;
  if (root) root.martd = root.martd || martd;
}(typeof window !== "undefined" ? window : this, function (win) {
  "use strict";

  var doc = win && win.document;
  var NAME = /^[A-Za-z0-9_.:@~\-]{1,128}$/;
  var ORDER = ["sse", "websocket", "longpoll", "jsonp"];
  var REMEMBER = "martd.transport";
  var LEFT = "martd.etag ";  // + url + " " + channel: the newest etag delivered in this tab
  var REFUSED = { 401: 1, 403: 1, 409: 1, 410: 1 };
  var has = Object.prototype.hasOwnProperty;

  var cfg = {
    url: "",            // where martd is mounted, without a trailing slash
    transports: null,   // a forced list, e.g. ["jsonp"]; null: choose
    share: true,        // one connection for all tabs of this origin
    stall: 8000,        // ms a stream may take to open before the next transport is tried
    idle: 45000,        // ms without any WebSocket frame (pings included): dead
    token: null,        // a signed token (grants for private channels and pushes), sent as ?token=
    credentials: false, // send cookies cross-origin (EventSource and XHR withCredentials)
    timeout: 25,        // seconds a long-poll waits
    retry: 500,         // ms before the first reconnect; doubles up to maxRetry
    maxRetry: 30000
  };

  // ------------------------------------------------------------ helpers

  function keys(o) {
    var out = [];
    for (var k in o) if (has.call(o, k)) out.push(k);
    return out;
  }

  function each(list, fn) {
    for (var i = 0; i < list.length; i++) fn(list[i], i);
  }

  function indexOf(list, item) {
    for (var i = 0; i < list.length; i++) if (list[i] === item) return i;
    return -1;
  }

  function parse(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function later(fn) { setTimeout(fn, 0); }

  function randomId(n) {
    var chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", out = "";
    var crypto = win && (win.crypto || win.msCrypto), bytes = null;
    if (crypto && crypto.getRandomValues && win.Uint8Array) bytes = crypto.getRandomValues(new Uint8Array(n));
    for (var i = 0; i < n; i++) {
      out += chars.charAt((bytes ? bytes[i] : Math.floor(Math.random() * 256)) % chars.length);
    }
    return out;
  }

  function storage(value, key) {
    key = key || REMEMBER;
    try {
      if (value === undefined) return win.sessionStorage.getItem(key);
      if (value === null) win.sessionStorage.removeItem(key);
      else win.sessionStorage.setItem(key, value);
    } catch (e) { /* storage may be off */ }
    return null;
  }

  // -------------------------------------------------- where the server is

  function ownScript() {
    if (!doc) return null;
    if (doc.currentScript) return doc.currentScript;
    var all = doc.getElementsByTagName("script");
    for (var i = all.length - 1; i >= 0; i--) {
      if (/\/client\.m?js([?#].*)?$/.test(all[i].src || "")) return all[i];
    }
    return null;
  }

  var script = ownScript();
  if (script && script.src) {
    cfg.url = script.src.replace(/\/client\.m?js([?#].*)?$/, "");
  } else if (win && win.location) {
    cfg.url = win.location.protocol + "//" + win.location.host;
  }
  if (script && script.getAttribute) {
    var attr = script.getAttribute("data-url");
    if (attr) cfg.url = attr.replace(/\/$/, "");
    attr = script.getAttribute("data-transport");
    if (attr) cfg.transports = attr.split(",");
    if (script.getAttribute("data-share") === "0") cfg.share = false;
  }

  // --------------------------------------------------------------- state

  var martd = { version: "1", cid: randomId(16), state: "idle", transport: null };
  var listeners = {};
  var subs = {};       // channel -> [sub] of this tab
  var known = {};      // channel -> {etag: newest seen, recent: [etags]} (dedupe)
  var want = {};       // channel -> etag the stream started from, until one is seen
  var live = {};       // channels the open connection carries
  var remote = {};     // leader: tab id -> [channels] other tabs want
  var leader = false, started = false, pending = false;
  var conn = null, timer = null, order = [], ti = 0, fails = 0, attempt = 0, worked = {};
  var bc = null, pubs = {}, pubSeq = 0, jp = null, jpSeq = 0, subSeq = 0, saved = {};

  function emit(name, detail) {
    var list = (listeners[name] || []).slice();
    each(list, function (fn) {
      try { fn(detail); } catch (e) { later(function () { throw e; }); }
    });
  }

  martd.on = function (name, fn) {
    (listeners[name] = listeners[name] || []).push(fn);
    return martd;
  };

  martd.off = function (name, fn) {
    var list = listeners[name] || [], at = indexOf(list, fn);
    if (at >= 0) list.splice(at, 1);
    return martd;
  };

  function post(message) {
    if (bc) {
      message.tab = martd.cid;
      try { bc.postMessage(message); } catch (e) { /* closed */ }
    }
  }

  function setState(state, transport) {
    if (state === martd.state && transport === martd.transport) return;
    martd.state = state;
    martd.transport = transport;
    if (leader) post({ t: "s", state: state, transport: transport, live: keys(live) });
    emit("state", { state: state, transport: transport });
  }

  function setLive(names) {
    live = {};
    each(names, function (name) { live[name] = true; });
    if (leader) post({ t: "s", state: martd.state, transport: martd.transport, live: names });
    each(keys(subs), function (channel) {
      each(subs[channel], function (sub) { if (sub.buffer && live[channel]) catchUp(sub); });
    });
  }

  // ------------------------------------------------- delivery in this tab

  function call(sub, data, etag, meta) {
    if (sub.gone) return;
    if (etag) left(sub.channel, etag);
    try { sub.cb(data, etag, meta || {}); } catch (e) { later(function () { throw e; }); }
  }

  // Where this tab left a channel, for its next page (null: forget it).
  function left(channel, etag) {
    if (etag === undefined) return storage(undefined, LEFT + cfg.url + " " + channel);
    if (saved[channel] !== etag) storage(saved[channel] = etag, LEFT + cfg.url + " " + channel);
    return null;
  }

  function meta(m) {
    return { event: m.event, type: m.type };
  }

  function record(channel) {
    return known[channel] || (known[channel] = { etag: null, recent: [] });
  }

  // One message, from our connection or relayed by the leader; false if seen.
  function dispatch(channel, etag, data, info) {
    var k = record(channel);
    if (etag) {
      if (indexOf(k.recent, etag) >= 0) return false;
      k.recent.push(etag);
      if (k.recent.length > 100) k.recent.shift();
      k.etag = etag;
    }
    each((subs[channel] || []).slice(), function (sub) {
      if (sub.buffer) sub.buffer.push([etag, data, info]);
      else call(sub, data, etag, info);
    });
    return true;
  }

  function control(type, channel, body) {
    if (type === "join" || type === "leave") return presenceEvent(type, channel, body);
    if (type === "missed") {
      if (subs[channel]) emit("missed", { channel: channel });
      return;
    }
    if (type !== "kicked" && type !== "deleted") return;
    if (type === "deleted") {
      delete known[channel];
      left(channel, null);
    }
    end(channel, type, { channel: channel });
  }

  // Every subscription of ``channel`` in this tab ends; the page hears ``name``.
  function end(channel, name, detail) {
    var list = subs[channel];
    delete subs[channel];
    delete want[channel];
    each(keys(remote), function (tab) {
      var at = indexOf(remote[tab], channel);
      if (at >= 0) remote[tab].splice(at, 1);
    });
    if (list) {
      each(list, function (sub) { sub.gone = true; });
      emit(name, detail);
      changed();
    }
  }

  // The server refused a channel (401, 403, 409, 410): only its subscriptions end.
  function refuse(channel, status, error) {
    var detail = { channel: channel, status: status, error: error };
    post({ t: "r", detail: detail });
    end(channel, "error", detail);
    if (leader) changed();
  }

  // A subscription that gave an etag on a channel that is already streamed
  // reads what it missed with one poll, holding live messages back meanwhile.
  function catchUp(sub) {
    if (sub.polling || sub.gone) return;
    sub.polling = true;
    var get = martd.transport === "jsonp" || !win.XMLHttpRequest ? jsonpGet : xhrGet;
    get(subUrl([sub.channel], [sub.from]) + "&timeout=1", 20000, function (status, body) {
      var seen = {}, held = sub.buffer || [];
      sub.buffer = null;
      var group = body && body.channels && body.channels[sub.channel];
      if (group) {
        if (group.missed) emit("missed", { channel: sub.channel });
        each(group.messages || [], function (m) {
          seen[m.etag] = true;
          call(sub, m.data, m.etag, meta(m));
        });
      } else if (!body || body.error) {
        emit("error", { status: status, error: (body && body.error) || "catch-up failed" });
      }
      each(held, function (m) { if (!seen[m[0]]) call(sub, m[1], m[0], m[2]); });
    });
  }

  // ------------------------------------------------------------- the API

  martd.sub = function (channel, cb, etag) {
    channel = String(channel);
    if (!NAME.test(channel) || channel === "martd") {
      throw new Error("martd: a channel name is 1 to 128 characters of A-Z a-z 0-9 _ . : @ ~ -");
    }
    var sub = { channel: channel, cb: cb, id: ++subSeq, buffer: null, from: null };
    if (etag !== false) {
      // no etag: where this tab left the channel, else everything retained
      sub.from = etag !== undefined && etag !== null && etag !== "" ? String(etag) : left(channel) || "0";
      sub.buffer = [];
    }
    (subs[channel] = subs[channel] || []).push(sub);
    start();
    if (sub.buffer && live[channel]) catchUp(sub);
    changed();
    return {
      channel: channel,
      cancel: function () { cancel(sub); }
    };
  };

  function cancel(sub) {
    if (sub.gone) return;
    sub.gone = true;
    var list = subs[sub.channel] || [], at = indexOf(list, sub);
    if (at >= 0) list.splice(at, 1);
    if (!list.length) {
      delete subs[sub.channel];
      delete want[sub.channel];
      changed();
    }
  }

  // attrs: size, life, one2one, presence, event (as on POST /pub)
  martd.pub = function (channel, key, data, attrs, done) {
    if (typeof attrs === "function") {
      done = attrs;
      attrs = null;
    }
    attrs = attrs || {};
    var body = typeof data === "string" ? data : JSON.stringify(data);
    function run(resolve, reject) {
      function fail(status, answer) {
        var error = new Error((answer && answer.error) || "martd: push failed (" + status + ")");
        error.status = status;
        reject(error);
      }
      // UTF-8 cannot carry a lone surrogate: refuse it rather than let it turn into U+FFFD
      if (/[\ud800-\udbff](?![\udc00-\udfff])|(^|[^\ud800-\udbff])[\udc00-\udfff]/.test(body)) {
        return fail(400, { error: "data: not valid UTF-8 (a lone surrogate)" });
      }
      var x = leader && conn && conn.ok && !conn.dead && conn.x;
      if (x && x.send && x.ready()) {
        var id = ++pubSeq;
        pubs[id] = { resolve: resolve, fail: fail };
        var frame = { type: "pub", channel: channel, data: body, id: id };
        if (key !== undefined && key !== null) frame.key = key;
        each(keys(attrs), function (k) { frame[k] = attrs[k]; });
        x.send(frame);
        return;
      }
      var query = [];
      if (key !== undefined && key !== null) query.push("key=" + encodeURIComponent(key));
      each(keys(attrs), function (k) { query.push(k + "=" + encodeURIComponent(attrs[k])); });
      if (cfg.token) query.push("token=" + encodeURIComponent(cfg.token));
      var url = cfg.url + "/pub/" + encodeURIComponent(channel) + (query.length ? "?" + query.join("&") : "");
      xhrPost(url, body, function (status, answer) {
        if (status >= 200 && status < 300) resolve(answer);
        else fail(status, answer);
      });
    }
    if (win.Promise) {
      var promise = new win.Promise(run);
      if (done) promise.then(function (r) { done(null, r); }, done);
      return promise;
    }
    run(function (r) { if (done) done(null, r); }, function (e) { if (done) done(e); });
    return null;
  };

  // Settle pushes made over a WebSocket; a closed socket leaves their fate unknown.
  function settle(frame) {
    var entry = pubs[frame.id];
    if (!entry) return;
    delete pubs[frame.id];
    if (frame.type === "ack") {
      entry.resolve({ channel: frame.channel, etag: frame.etag, subscribers: frame.subscribers, messages: frame.messages });
    } else {
      entry.fail(frame.status, frame);
    }
  }

  function dropPubs() {
    var all = pubs;
    pubs = {};
    each(keys(all), function (id) { all[id].fail(0, { error: "martd: the connection closed before the push was answered" }); });
  }

  // The channels the open connection carries (this tab's and other tabs').
  martd.channels = function () { return keys(live); };

  martd.config = function (options) {
    if (!options) {
      var copy = {};
      each(keys(cfg), function (k) { copy[k] = cfg[k]; });
      return copy;
    }
    each(keys(options), function (k) {
      if (k === "transport") cfg.transports = options[k] ? [options[k]] : null;
      else if (has.call(cfg, k)) cfg[k] = options[k];
    });
    if (typeof cfg.url === "string") cfg.url = cfg.url.replace(/\/$/, "");
    if (leader && ("transport" in options || "transports" in options || "url" in options ||
        "token" in options || "credentials" in options)) {
      restart();
    }
    return martd;
  };

  // ------------------------------------------------------ one tab leads

  function start() {
    if (started) return;
    started = true;
    var locks = win.navigator && win.navigator.locks;
    if (!cfg.share || !win.BroadcastChannel || !locks || !locks.request) {
      lead();
      return;
    }
    var name = "martd " + cfg.url;
    bc = new win.BroadcastChannel(name);
    bc.onmessage = function (e) { relayed(e.data || {}); };
    locks.request(name, function () {
      lead();
      return new win.Promise(function () { /* held while the page lives */ });
    });
    if (win.addEventListener) {
      win.addEventListener("pagehide", function () { if (!leader) post({ t: "bye" }); });
    }
  }

  function lead() {
    leader = true;
    remote = {};
    order = transports();
    post({ t: "hello" });
    changed();
  }

  function relayed(m) {
    if (m.tab === martd.cid) return;
    if (leader) {
      if (m.t === "want") {
        remote[m.tab] = m.channels;
        post({ t: "s", state: martd.state, transport: martd.transport, live: keys(live) });
        changed();
      } else if (m.t === "bye") {
        delete remote[m.tab];
        changed();
      }
      return;
    }
    if (m.t === "m") dispatch(m.c, m.e, m.d, m.x);
    else if (m.t === "e") record(m.c).etag = m.e;
    else if (m.t === "c") control(m.type, m.c, m.b);
    else if (m.t === "s") { setLive(m.live || []); setState(m.state, m.transport); }
    else if (m.t === "x") emit("error", m.detail);
    else if (m.t === "r") end(m.detail.channel, "error", m.detail);
    else if (m.t === "hello") announce();
  }

  function announce() {
    post({ t: "want", channels: keys(subs) });
  }

  // Batch the changes of one task (a microtask is not throttled in background tabs).
  function soon(fn) {
    if (win.Promise) win.Promise.resolve().then(fn);
    else later(fn);
  }

  function changed() {
    if (pending || !started) return;
    pending = true;
    soon(function () {
      pending = false;
      if (leader) reopen();
      else announce();
    });
  }

  // ------------------------------------------- the connection (leader)

  function transports() {
    var list = cfg.transports || ORDER, out = [];
    each(list, function (t) {
      t = { eventsource: "sse", ws: "websocket", poll: "longpoll" }[t] || t;
      if (available(t) && indexOf(out, t) < 0) out.push(t);
    });
    var remembered = cfg.transports ? null : storage();
    var at = remembered ? indexOf(out, remembered) : -1;
    if (at > 0) out.unshift(out.splice(at, 1)[0]);
    return out.length ? out : ["jsonp"];
  }

  function available(t) {
    if (t === "sse") return !!win.EventSource;
    if (t === "websocket") return !!win.WebSocket;
    if (t === "longpoll") return !!win.XMLHttpRequest && "withCredentials" in new win.XMLHttpRequest();
    return t === "jsonp" && !!doc;
  }

  function wanted() {
    var all = {};
    each(keys(subs), function (c) { all[c] = true; });
    each(keys(remote), function (tab) { each(remote[tab] || [], function (c) { all[c] = true; }); });
    return keys(all);
  }

  function sameSet(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (indexOf(b, a[i]) < 0) return false;
    return true;
  }

  // Where the stream starts for a channel: after the newest etag seen; or, when
  // this tab alone asked for it with one etag, from there; or from now.
  function streamEtag(channel, previous) {
    var k = known[channel];
    if (k && k.etag) return k.etag;
    if (want[channel]) return want[channel];
    if (previous && indexOf(previous, channel) >= 0) return "";
    var list = subs[channel] || [], from = null, alone = list.length > 0;
    each(keys(remote), function (tab) { if (indexOf(remote[tab] || [], channel) >= 0) alone = false; });
    each(list, function (sub) {
      if (!sub.buffer || sub.polling || (from !== null && from !== sub.from)) alone = false;
      from = sub.from;
    });
    if (!alone || from === null) return "";
    each(list, function (sub) { sub.buffer = null; });
    want[channel] = from;
    return from;
  }

  function restart() {
    if (conn) conn.close();
    conn = null;
    order = transports();
    ti = 0;
    fails = 0;
    attempt = 0;
    reopen();
  }

  function reopen() {
    var names = wanted();
    if (conn && !conn.dead && sameSet(conn.names, names)) return;
    clearTimeout(timer);
    timer = null;
    var old = conn;
    conn = null;
    if (!names.length) {
      if (old) old.close();
      setLive([]);
      setState("idle", null);
      return;
    }
    conn = connect(names, old && !old.dead && old.ok ? old.names : null);
    // A stream replaces the old one once it is open (dispatch drops repeats); a poll at once.
    if (old && (!conn.streaming || old.dead)) old.close();
    else if (old) conn.old = old;
  }

  function connect(names, previous) {
    var t = order[ti % order.length];
    var c = { t: t, names: names, ok: false, dead: false, streaming: t === "sse" || t === "websocket" };
    var etags = [];
    each(names, function (name) { etags.push(streamEtag(name, previous)); });
    c.close = function () {
      if (c.dead) return;
      c.dead = true;
      clearTimeout(c.stall);
      if (c.x) c.x.close();
      if (c.old) c.old.close();
    };
    c.stall = setTimeout(function () { failed(c); }, c.streaming ? cfg.stall : (cfg.timeout + 15) * 1000);
    var h = {
      open: function () {
        if (c.dead || c.ok) return;
        c.ok = true;
        clearTimeout(c.stall);
        worked[t] = true;
        attempt = 0;
        fails = 0;
        storage(t);
        if (c.old) { c.old.close(); c.old = null; }
        if (c === conn) {
          setState("open", t);
          setLive(names);
        }
      },
      msg: function (channel, etag, data, m) {
        if (c.dead) return;
        var info = meta(m || {});
        if (dispatch(channel, etag, data, info)) post({ t: "m", c: channel, e: etag, d: data, x: info });
      },
      etag: function (channel, etag) {
        if (c.dead || !etag) return;
        record(channel).etag = etag;
        post({ t: "e", c: channel, e: etag });
      },
      control: function (type, channel, body) {
        if (c.dead) return;
        post({ t: "c", type: type, c: channel, b: body });
        control(type, channel, body);
      },
      error: function (detail) {
        if (c.dead) return;
        var channel = detail && refused(detail, names);
        if (channel) return refuse(channel, detail.status, detail.error);
        if (detail) {
          post({ t: "x", detail: detail });
          emit("error", detail);
        } else if (c.streaming && !c.ok) {
          // A stream refused before it opened does not show its status: ask once,
          // so that a channel the server refuses ends alone.
          clearTimeout(c.stall);
          if (c.x) c.x.close();
          c.x = null;
          return probe(names, function (status, body) {
            if (c.dead) return;
            channel = body && refused({ status: status, channel: body.channel }, names);
            if (channel) refuse(channel, status, body.error);
            else failed(c);
          });
        }
        failed(c);
      }
    };
    if (!previous) setState(martd.state === "open" ? "reconnecting" : "connecting", t);
    if (!c.streaming) setLive(names);
    try {
      c.x = TRANSPORTS[t](names, etags, h);
    } catch (err) {
      // e.g. an old browser's WebSocket refusing a relative URL, or mixed content:
      // fail like any broken connection, so the next transport gets its turn
      setTimeout(function () { h.error({ error: "transport: " + ((err && err.message) || err) }); }, 0);
    }
    return c;
  }

  // The channel a refusal names (or the only one), if it is a refusal.
  function refused(detail, names) {
    if (!REFUSED[detail.status]) return null;
    var channel = detail.channel || (names.length === 1 && names[0]);
    return indexOf(names, channel) >= 0 ? channel : null;
  }

  function probe(names, done) {
    var jsonp = martd.transport === "jsonp" || !win.XMLHttpRequest;
    var url = subUrl(names, []) + "&timeout=1";
    (jsonp ? jsonpGet : xhrGet)(url, 10000, function (status, body) {
      // XHR refused across origins (no CORS): a script tag is not
      if (!status && !jsonp && doc) jsonpGet(url, 10000, done);
      else done(status, body);
    });
  }

  function failed(c) {
    if (c.dead) return;
    var ok = c.ok;
    c.close();
    if (c !== conn) return;
    setLive([]);
    if (!ok && !worked[c.t] && ++fails >= 2) {
      fails = 0;
      ti = (ti + 1) % order.length;
    }
    var delay = Math.min(cfg.maxRetry, cfg.retry * Math.pow(2, ok ? 0 : attempt++));
    delay = Math.round(delay / 2 + Math.random() * delay / 2);
    setState("reconnecting", c.t);
    timer = setTimeout(function () {
      timer = null;
      reopen();
    }, delay);
  }

  if (win && win.addEventListener) {
    win.addEventListener("online", function () {
      if (leader && timer) {
        clearTimeout(timer);
        timer = null;
        reopen();
      }
    });
  }

  // -------------------------------------------------------- transports

  function subUrl(names, etags) {
    var url = cfg.url + "/sub/" + names.join(",") + "?cid=" + martd.cid;
    var list = etags.join(",");
    if (list.replace(/,/g, "")) url += "&etag=" + encodeURIComponent(list);
    if (cfg.token) url += "&token=" + encodeURIComponent(cfg.token);
    return url;
  }

  // ?format=json: each event's data is the message as JSON, so CR and CRLF arrive as sent
  function eventSource(names, etags, h) {
    var url = subUrl(names, etags) + "&transport=sse&format=json";
    var es = cfg.credentials ? new win.EventSource(url, { withCredentials: true }) : new win.EventSource(url);
    es.onopen = h.open;
    es.onerror = function () { h.error(null); };
    if (names.length === 1) {
      es.onmessage = function (e) {
        var m = parse(e.data);
        if (m) h.msg(names[0], m.etag, m.data, m);
      };
    } else {
      each(names, function (name, i) {
        es.addEventListener(name, function (e) {
          var ids = String(e.lastEventId).split(","), m = parse(e.data);
          each(ids, function (id, j) { if (j !== i) h.etag(names[j], id); });
          if (m) h.msg(name, m.etag, m.data, m);
        });
      });
    }
    es.addEventListener("martd", function (e) {
      var body = parse(e.data);
      if (body && body.type) h.control(body.type, body.channel, body);
    });
    return { close: function () { es.close(); } };
  }

  function webSocket(names, etags, h) {
    var ws = new win.WebSocket(subUrl(names, etags).replace(/^http/, "ws")), idle = null;
    // Silent for idle/2: ask for a pong; still silent at idle: the connection is dead.
    function alive() {
      clearTimeout(idle);
      idle = setTimeout(function () {
        try { ws.send('{"type":"ping"}'); } catch (e) { /* closing */ }
        idle = setTimeout(function () { h.error(null); }, cfg.idle / 2);
      }, cfg.idle / 2);
    }
    ws.onopen = function () { alive(); h.open(); };
    ws.onmessage = function (e) {
      alive();
      var body = parse(e.data);
      if (!body) return;
      // a message has data (its type, if any, is its content type); other frames do not
      if (typeof body.data === "string") h.msg(body.channel, body.etag, body.data, body);
      else if (body.type === "ack" || body.type === "error") settle(body);
      else if (body.type !== "ping" && body.type !== "pong") h.control(body.type, body.channel, body);
    };
    ws.onclose = function () {
      clearTimeout(idle);
      dropPubs();
      h.error(null);
    };
    return {
      close: function () {
        clearTimeout(idle);
        ws.onclose = ws.onmessage = null;
        dropPubs();
        try { ws.close(); } catch (e) { /* not open yet */ }
      },
      send: function (frame) { ws.send(JSON.stringify(frame)); },
      ready: function () { return ws.readyState === 1; }
    };
  }

  // Long-poll by XHR or by script tags (JSONP): ask, take the answer, ask again.
  function poller(get) {
    return function (names, etags, h) {
      var stopped = false, req = null, opened = null;
      function answer(status, body) {
        req = null;
        if (stopped) return;
        if (status === 200 && body && body.channels) {
          h.open();
          var groups = body.channels;
          each(keys(groups), function (channel) {
            var group = groups[channel];
            if (group.missed) h.control("missed", channel);
            each(group.messages || [], function (m) { h.msg(channel, m.etag, m.data, m); });
            h.etag(channel, group.etag);
          });
          next();
        } else if (body && body.type && body.channel) {
          h.open();
          h.control(body.type, body.channel);
          later(next);
        } else {
          // 4xx: something to tell; 0 and 5xx (shutdown, a restart): just reconnect
          var told = status >= 400 && status < 500 && body && body.error;
          h.error(told ? { status: status, error: body.error, channel: body.channel } : null);
        }
      }
      function next() {
        if (stopped) return;
        var list = [];
        each(names, function (name) { list.push((known[name] && known[name].etag) || want[name] || ""); });
        req = get(subUrl(names, list) + "&timeout=" + cfg.timeout, (cfg.timeout + 15) * 1000, answer);
      }
      etags = null;
      next();
      // A poll that has not failed at once is taken as working.
      opened = setTimeout(function () { if (req) h.open(); }, 1000);
      return {
        close: function () {
          stopped = true;
          clearTimeout(opened);
          if (req) req.abort();
        }
      };
    };
  }

  function xhrGet(url, ms, done) {
    return xhr("GET", url, null, ms, done);
  }

  function xhrPost(url, body, done) {
    return xhr("POST", url, body, 30000, done);
  }

  function xhr(method, url, body, ms, done) {
    var x = new win.XMLHttpRequest(), over = false;
    x.open(method, url, true);
    x.timeout = ms;
    if (cfg.credentials) x.withCredentials = true;
    if (body !== null) x.setRequestHeader("Content-Type", "text/plain;charset=UTF-8");
    x.onreadystatechange = function () {
      if (x.readyState !== 4 || over) return;
      over = true;
      done(x.status, parse(x.responseText));
    };
    x.send(body);
    return { abort: function () { over = true; x.abort(); } };
  }

  function jsonpGet(url, ms, done) {
    jp = jp || (win.__martd_jp = win.__martd_jp || {});
    var name = "c" + (++jpSeq) + martd.cid.slice(0, 6), tag = doc.createElement("script"), over = false;
    function finish(status, body) {
      if (over) return;
      over = true;
      clearTimeout(timeout);
      jp[name] = function () {};
      setTimeout(function () { delete jp[name]; }, ms);
      if (tag.parentNode) tag.parentNode.removeChild(tag);
      if (done) done(status, body);
    }
    var timeout = setTimeout(function () { finish(0, null); }, ms);
    jp[name] = function (body) { finish((body && body.status) || 200, body); };
    tag.onerror = function () { finish(0, null); };
    tag.async = true;
    tag.src = url + "&callback=__martd_jp." + name;
    (doc.head || doc.documentElement).appendChild(tag);
    return { abort: function () { done = null; finish(0, null); } };
  }

  // ------------------------------------------------ presence (v1.1)
  // Who is here: join/leave events reach martd.on("join"/"leave") on streams
  // (EventSource, WebSocket; a long-poll is not told). The list needs server
  // rights on the channel: a token that grants publish (cfg.token or the
  // martd_auth cookie), or a page on an allowed address.

  function presenceEvent(type, channel, body) {
    if (!subs[channel] || !body) return;
    emit(type, { channel: channel, cid: body.cid, user: body.user === undefined ? null : body.user });
  }

  // A Promise of [{cid, user, transport}] (null without Promise); rejects with an
  // Error whose status is the server's answer (403 without server rights on it).
  martd.presence = function (channel) {
    var url = cfg.url + "/pub/" + encodeURIComponent(channel) + "?presence=1";
    if (cfg.token) url += "&token=" + encodeURIComponent(cfg.token);
    if (!win.Promise) return null;
    return new win.Promise(function (resolve, reject) {
      xhrGet(url, 20000, function (status, answer) {
        if (status === 200 && answer && answer.clients) return resolve(answer.clients);
        var error = new Error((answer && answer.error) || "martd: presence failed (" + status + ")");
        error.status = status;
        reject(error);
      });
    });
  };
  // ------------------------------------------------ end of presence

  var TRANSPORTS = {
    sse: eventSource,
    websocket: webSocket,
    longpoll: poller(xhrGet),
    jsonp: poller(jsonpGet)
  };

  return martd;
}));
