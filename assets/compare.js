/* Wan LoRA Studio: the Compare tab's synchronized player.
 *
 * Gradio's HTML component does not run <script> tags, so this file is put in the page
 * head once (studio.ui.compare_player.head_html) and drives every player through event
 * delegation on the document: one play/pause button, one scrub slider, loop and speed
 * for all the videos of a player ([data-compare-player]). The longest video leads; the
 * others follow its clock and hold their last frame when they are shorter.
 */
(function () {
  "use strict";
  if (window.studioCompare) return;

  var EPS = 0.04; // seconds: "at the end"
  var DRIFT = 0.12; // seconds a follower may drift from the leader before it is re-aligned
  var SCRUB_MAX = 1000;

  function players() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-compare-player]"));
  }
  function videosOf(root) {
    return Array.prototype.slice.call(root.querySelectorAll("video.compare-video"));
  }
  function dur(v) {
    return isFinite(v.duration) && v.duration > 0 ? v.duration : 0;
  }
  function leaderOf(root) {
    var vs = videosOf(root);
    var lead = vs[0] || null;
    for (var i = 1; i < vs.length; i++) if (dur(vs[i]) > dur(lead)) lead = vs[i];
    return lead;
  }
  function total(root) {
    var lead = leaderOf(root);
    return lead ? dur(lead) : 0;
  }
  function clampTo(v, t) {
    var d = dur(v);
    return d ? Math.max(0, Math.min(t, d - 0.001)) : Math.max(0, t);
  }
  function isPlaying(root) {
    return root.getAttribute("data-playing") === "1";
  }
  function fmt(t) {
    return (Math.round(t * 100) / 100).toFixed(2);
  }
  function update(root) {
    var lead = leaderOf(root);
    var t = lead ? lead.currentTime : 0;
    var length = total(root);
    var scrub = root.querySelector(".compare-scrub");
    if (scrub && !root.__scrubbing) scrub.value = length ? Math.round((t / length) * SCRUB_MAX) : 0;
    var label = root.querySelector(".compare-time");
    if (label) label.textContent = fmt(t) + " / " + fmt(length) + " s";
    var button = root.querySelector("[data-compare-action='toggle']");
    if (button) {
      var playing = isPlaying(root);
      button.textContent = playing ? "❚❚ Pause" : "▶ Play";
      button.setAttribute("aria-pressed", playing ? "true" : "false");
    }
  }
  function seekAll(root, t) {
    videosOf(root).forEach(function (v) {
      v.currentTime = clampTo(v, t);
    });
    update(root);
  }
  function playAll(root) {
    var lead = leaderOf(root);
    if (!lead) return;
    var t = lead.currentTime;
    if (t >= total(root) - EPS) t = 0;
    seekAll(root, t);
    root.setAttribute("data-playing", "1");
    videosOf(root).forEach(function (v) {
      if (!dur(v) || v.currentTime < dur(v) - EPS) {
        var p = v.play();
        if (p && p.catch) p.catch(function () {});
      }
    });
    update(root);
  }
  function pauseAll(root) {
    root.setAttribute("data-playing", "0");
    var vs = videosOf(root);
    vs.forEach(function (v) {
      v.pause();
    });
    var lead = leaderOf(root);
    if (lead) {
      var t = lead.currentTime;
      vs.forEach(function (v) {
        if (v !== lead) v.currentTime = clampTo(v, t);
      });
    }
    update(root);
  }
  function toggle(root) {
    if (isPlaying(root)) pauseAll(root);
    else playAll(root);
  }
  function tick() {
    players().forEach(function (root) {
      if (!isPlaying(root)) return;
      var lead = leaderOf(root);
      if (!lead) return;
      var length = total(root);
      if (lead.ended || (length && lead.currentTime >= length - 0.001 && lead.paused)) {
        var loop = root.querySelector("[data-compare-action='loop']");
        if (!loop || loop.checked) {
          seekAll(root, 0);
          playAll(root);
        } else {
          pauseAll(root);
        }
        return;
      }
      var t = lead.currentTime;
      videosOf(root).forEach(function (v) {
        if (v === lead) return;
        var d = dur(v);
        var target = clampTo(v, t);
        if (Math.abs(v.currentTime - target) > DRIFT) v.currentTime = target;
        if (v.paused && !lead.paused && (!d || t < d - EPS)) {
          var p = v.play();
          if (p && p.catch) p.catch(function () {});
        }
      });
      if (lead.paused && !lead.ended) {
        var p = lead.play();
        if (p && p.catch) p.catch(function () {});
      }
      update(root);
    });
  }

  function rootOf(node) {
    return node && node.closest ? node.closest("[data-compare-player]") : null;
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-compare-action='toggle']");
    var root = rootOf(button);
    if (root) {
      event.preventDefault();
      toggle(root);
    }
  });
  document.addEventListener("input", function (event) {
    var target = event.target;
    var root = rootOf(target);
    if (!root) return;
    if (target.classList.contains("compare-scrub")) {
      root.__scrubbing = true;
      seekAll(root, (Number(target.value) / SCRUB_MAX) * total(root));
      root.__scrubbing = false;
    }
  });
  document.addEventListener("change", function (event) {
    var target = event.target;
    var root = rootOf(target);
    if (!root) return;
    if (target.getAttribute("data-compare-action") === "rate") {
      var rate = Number(target.value) || 1;
      videosOf(root).forEach(function (v) {
        v.playbackRate = rate;
      });
    }
  });
  // Media events do not bubble: listen in the capture phase.
  ["loadedmetadata", "seeked"].forEach(function (name) {
    document.addEventListener(
      name,
      function (event) {
        var root = rootOf(event.target);
        if (root && !isPlaying(root)) update(root);
      },
      true
    );
  });
  document.addEventListener(
    "loadedmetadata",
    function (event) {
      var root = rootOf(event.target);
      var rate = root && root.querySelector("[data-compare-action='rate']");
      if (rate) event.target.playbackRate = Number(rate.value) || 1;
    },
    true
  );

  setInterval(tick, 40);

  window.studioCompare = {
    players: players,
    play: function (i) {
      playAll(players()[i || 0]);
    },
    pause: function (i) {
      pauseAll(players()[i || 0]);
    },
    seek: function (t, i) {
      seekAll(players()[i || 0], t);
    },
    times: function (i) {
      var root = players()[i || 0];
      return root ? videosOf(root).map(function (v) { return v.currentTime; }) : [];
    },
  };
})();
