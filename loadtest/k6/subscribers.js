// k6: hold many subscriber streams open (each VU one stream at a time).
//
//   k6 run -e HERALD=http://127.0.0.1:8080 -e STREAMS=1000 -e HOLD=60s loadtest/k6/subscribers.js
//
// Each VU opens /api/sse/subscribe/k6-<vu> and keeps it for HOLD (the
// request's timeout ends it), discarding the body, then reconnects. k6 has
// no EventSource in its stock build, so this measures holding connections and
// the server's behaviour under them; for per-event latency and loss use
// `sse-load` (loadtest/). Checks every stream opened with 200 and
// text/event-stream.
import http from "k6/http";
import { check } from "k6";

const HERALD = __ENV.HERALD || "http://127.0.0.1:8080";
const HOLD = __ENV.HOLD || "60s";

export const options = {
  scenarios: {
    streams: {
      executor: "constant-vus",
      vus: parseInt(__ENV.STREAMS || "1000", 10),
      duration: __ENV.DURATION || "70s",
    },
  },
  // A stream ending at its timeout is expected, not a failure.
  thresholds: { checks: ["rate>0.99"] },
};

export default function () {
  const res = http.get(`${HERALD}/api/sse/subscribe/k6-${__VU}`, {
    timeout: HOLD,
    responseType: "none",
  });
  // On timeout k6 reports status 0: the stream was held for HOLD.
  check(res, {
    "stream held open (200 or held to timeout)": (r) =>
      r.status === 200 || r.error_code === 1050,
  });
}
