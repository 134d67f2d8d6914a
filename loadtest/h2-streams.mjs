// Opens SSE streams over TLS + HTTP/2 (what browsers do) and counts the
// events they get. Used by scripts/measure-proxy.
//
//   node loadtest/h2-streams.mjs --url https://127.0.0.1:8443 --streams 2000 [--per-conn 1]
//
// One line on stdout when every stream is open ("open N"); then, on stdin,
// "count" prints the events received so far ("events N"), "close" closes
// every connection and exits. Self-signed certificates are accepted (local
// measurements only). Every wait is bounded.
import http2 from "node:http2";
import readline from "node:readline";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const url = arg("url");
const streams = Number(arg("streams", "1000"));
const perConn = Number(arg("per-conn", "1"));
const sessions = [];
let open = 0;
let events = 0;

function openSession() {
  const s = http2.connect(url, { rejectUnauthorized: false });
  s.on("error", () => {});
  sessions.push(s);
  return s;
}

function openStream(session, i) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":path": `/api/sse/subscribe/m${i}` });
    req.setEncoding("utf8");
    let tail = "";
    req.on("response", (h) => {
      if (h[":status"] !== 200) reject(new Error(`stream ${i}: ${h[":status"]}`));
      else resolve();
    });
    req.on("data", (chunk) => {
      const text = tail + chunk;
      // Every event frame has an id line, then "\ndata:"; the tail keeps a
      // pattern split over two chunks (5 bytes: never a whole one).
      events += text.split("\ndata:").length - 1;
      tail = text.slice(-5);
    });
    req.on("error", reject);
  });
}

const deadline = setTimeout(() => { console.error("not every stream opened within 120 s"); process.exit(1); }, 120000);
let session = null;
const pending = [];
for (let i = 0; i < streams; i += 1) {
  if (i % perConn === 0) session = openSession();
  pending.push(openStream(session, i).then(() => { open += 1; }));
  // Bounded connects in flight.
  if (pending.length % 200 === 0) await Promise.all(pending.splice(0));
}
await Promise.all(pending);
clearTimeout(deadline);
console.log(`open ${open}`);

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (line === "count") console.log(`events ${events}`);
  if (line === "close") {
    for (const s of sessions) s.destroy();
    process.exit(0);
  }
});
