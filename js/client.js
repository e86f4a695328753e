/* martd browser client (minimal): martd.sub(channel, cb, etag), martd.pub(channel, key, data). */
(function (root) {
  "use strict";
  var script = document.currentScript;
  var base = script ? script.src.replace(/\/client\.js(\?.*)?$/, "") : "";
  var subs = {}, etags = {}, es = null;
  var martd = { cid: Math.random().toString(36).slice(2, 12) };

  function open() {
    if (es) { es.close(); es = null; }
    var names = Object.keys(subs);
    if (!names.length) return;
    var list = names.map(function (n) { return etags[n] || ""; }).join(",");
    var url = base + "/sub/" + names.join(",") + "?transport=sse&cid=" + martd.cid +
      (list.replace(/,/g, "") ? "&etag=" + encodeURIComponent(list) : "");
    es = new EventSource(url);
    function deliver(channel, e) {
      var ids = (e.lastEventId || "").split(",");
      etags[channel] = names.length > 1 ? ids[names.indexOf(channel)] : e.lastEventId;
      (subs[channel] || []).forEach(function (cb) { cb(e.data, etags[channel]); });
    }
    if (names.length === 1) es.onmessage = function (e) { deliver(names[0], e); };
    else names.forEach(function (n) { es.addEventListener(n, function (e) { deliver(n, e); }); });
  }

  martd.sub = function (channel, cb, etag) {
    if (etag !== undefined) etags[channel] = etag;
    (subs[channel] = subs[channel] || []).push(cb);
    open();
    return { cancel: function () {
      subs[channel] = (subs[channel] || []).filter(function (f) { return f !== cb; });
      if (!subs[channel].length) delete subs[channel];
      open();
    } };
  };
  martd.pub = function (channel, key, data) {
    return fetch(base + "/pub/" + channel + "?key=" + encodeURIComponent(key),
      { method: "POST", body: data }).then(function (r) {
      return r.json().then(function (b) { if (!r.ok) throw new Error(b.error); return b; });
    });
  };
  root.martd = martd;
})(this);
