// Zapline live feed client. No build step, no dependencies.
//
//   const feed = new ZaplineFeed({ instance: "main", token: "…", onChange, onState, onReset });
//   feed.start();
//
// It remembers the last cursor it handled, reconnects with full-jitter exponential backoff
// (at once after close code 1012, "service restart"), resumes with `after=<cursor>` so no
// change is missed or applied twice, and reports its state: connecting, live, reconnecting.
(function (global) {
  "use strict";

  var BASE_MS = 500;
  var CAP_MS = 30000;
  var STABLE_MS = 10000; // a connection that lived this long resets the backoff
  var SILENT_MS = 60000; // the server pings every 20 s; this much silence means a dead link

  function ZaplineFeed(options) {
    this.url = options.url || defaultUrl();
    this.instance = options.instance;
    this.token = options.token;
    this.cursor = options.after == null ? null : Number(options.after);
    this.onChange = options.onChange || function () {};
    this.onState = options.onState || function () {};
    this.onReset = options.onReset || function () {};
    this.state = "idle";
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.watchdog = null;
    this.stopped = true;
  }

  ZaplineFeed.prototype.start = function () {
    this.stopped = false;
    this._connect("connecting");
  };

  ZaplineFeed.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.socket) this.socket.close(1000);
    this._setState("idle");
  };

  ZaplineFeed.prototype._connect = function (state) {
    var self = this;
    this._setState(state);
    var query = "instance=" + encodeURIComponent(this.instance) +
      "&token=" + encodeURIComponent(this.token) +
      (this.cursor == null ? "" : "&after=" + this.cursor);
    var socket = new WebSocket(this.url + "?" + query);
    var openedAt = 0;
    this.socket = socket;
    socket.onopen = function () { openedAt = Date.now(); self._feedWatchdog(); };
    socket.onmessage = function (event) { self._feedWatchdog(); self._handle(JSON.parse(event.data)); };
    socket.onclose = function (event) {
      clearTimeout(self.watchdog);
      if (self.socket !== socket || self.stopped) return;
      if (openedAt && Date.now() - openedAt > STABLE_MS) self.attempt = 0;
      self._retry(event.code);
    };
  };

  ZaplineFeed.prototype._handle = function (frame) {
    if (frame.type === "live") {
      this.cursor = frame.cursor;
      this._setState("live");
    } else if (frame.type === "reset") {
      this.cursor = null; // the next "live" frame names where the feed stands now
      this.onReset();
    } else if (frame.type === "ping") {
      // keep-alive only
    } else if (this.cursor == null || frame.cursor > this.cursor) {
      this.cursor = frame.cursor; // frames at or below the cursor were handled already
      this.onChange(frame);
    }
  };

  ZaplineFeed.prototype._retry = function (code) {
    var self = this;
    // Full jitter: a random wait up to the exponential ceiling, so a deploy that closes
    // every client at once does not bring them all back at the same instant.
    var ceiling = Math.min(CAP_MS, BASE_MS * Math.pow(2, this.attempt));
    var delay = code === 1012 && this.attempt === 0 ? 0 : Math.random() * ceiling;
    this.attempt += 1;
    this._setState("reconnecting");
    this.timer = setTimeout(function () { self._connect("reconnecting"); }, delay);
  };

  ZaplineFeed.prototype._feedWatchdog = function () {
    var self = this;
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(function () {
      if (self.socket) self.socket.close(4000); // silent too long: reconnect
    }, SILENT_MS);
  };

  ZaplineFeed.prototype._setState = function (state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  };

  function defaultUrl() {
    var scheme = global.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + global.location.host + "/ws";
  }

  global.ZaplineFeed = ZaplineFeed;
})(window);
