// End-to-end: headless Chromium straight to herald over TLS + HTTP/2 (no
// proxy), the way a browser meets a node that terminates TLS itself, so
// every request goes through herald's own HTTP/2 server.
//
// Checks, each bounded in time:
//  1. the demo page at / is served over h2;
//  2. 10 EventSource streams on that origin (more than HTTP/1.1's 6) are open
//     at once on one connection, and events published by the page itself
//     (fetch POST, a request body on the same connection) reach each stream,
//     in order, exactly once;
//  3. the streams' access-log lines name the h2 transport;
//  4. closing half the streams in the page (the browser resets them) ends
//     them on the node, and the other half keep receiving;
//  5. a drain ends the rest cleanly and herald exits 0.
//
// Env: HERALD_BIN.
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { check, launchChromium, run, start, stop, until } from "./lib.mjs";

const HERALD = process.env.HERALD_BIN;
const PORT = 18543;
const ORIGIN = `https://localhost:${PORT}`;
const STREAMS = 10;
const figures = {};

async function metric(name) {
  const m = await (await fetch(`http://127.0.0.1:${PORT + 1}/metrics`)).text();
  return Number((m.match(new RegExp(`^${name} (\\S+)`, "m")) || [])[1]);
}

async function main() {
  const work = mkdtempSync(path.join(tmpdir(), "herald-h2-e2e-"));
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-days", "1", "-keyout", path.join(work, "key.pem"), "-out", path.join(work, "cert.pem")], { stdio: "ignore" });
  const herald = start(HERALD, [
    "--listen", `127.0.0.1:${PORT}`,
    "--admin-listen", `127.0.0.1:${PORT + 1}`,
    "--tls-cert", path.join(work, "cert.pem"), "--tls-key", path.join(work, "key.pem"),
    "--shutdown-drain", "500ms",
    "--access-log",
  ], { env: { ...process.env, NO_COLOR: "1" } });
  await until("herald ready", async () => (await fetch(`http://127.0.0.1:${PORT + 1}/readyz`)).status === 200);

  const browser = await launchChromium();
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const got = Array.from({ length: STREAMS }, () => []);
  await page.exposeFunction("addMessage", (i, message) => { got[i].push(message.n); });

  await check("the demo page is served by herald over h2", async () => {
    const resp = await page.goto(`${ORIGIN}/`);
    if (resp.status() !== 200) throw new Error(`status ${resp.status()}`);
    const proto = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
    if (proto !== "h2") throw new Error(`protocol ${proto}`);
  });

  // Publishes from the page: the same origin, so the same h2 connection.
  const publish = (rounds) => page.evaluate(async ({ n, rounds }) => {
    for (const r of rounds) {
      for (let i = 0; i < n; i += 1) {
        const resp = await fetch("/api/publish", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ user: `b${i}`, data: { n: r } }),
        });
        if (resp.status !== 200) throw new Error(`publish ${resp.status}: ${await resp.text()}`);
      }
    }
  }, { n: STREAMS, rounds });

  // The demo page holds a stream of its own.
  let base = 0;
  await check(`${STREAMS} EventSource streams on one connection get every event the page publishes`, async () => {
    base = await metric("herald_sse_connections");
    await page.evaluate(({ n }) => {
      window.streams = [];
      for (let i = 0; i < n; i += 1) {
        // The seed page's code, once per stream (one user each).
        const es = new EventSource(`/api/sse/subscribe/b${i}`);
        es.onmessage = (event) => window.addMessage(i, event.data === undefined ? null : JSON.parse(event.data));
        window.streams.push(es);
      }
    }, { n: STREAMS });
    await until("every stream open", () => page.evaluate(() => window.streams.every((s) => s.readyState === 1)), 20000);
    await until("herald counts them", async () => (await metric("herald_sse_connections")) === base + STREAMS, 10000);
    const t0 = Date.now();
    await publish([1, 2, 3, 4, 5]);
    await until("5 events on every stream", async () => got.every((l) => l.length >= 5), 20000);
    figures.publish_to_all_streams_ms = Date.now() - t0;
    const bad = got.filter((l) => l.join() !== "1,2,3,4,5");
    if (bad.length) throw new Error(`streams got ${JSON.stringify(got)}`);
  });

  await check("the streams were served over h2 (access log)", async () => {
    const opened = herald.log.split("\n").filter((l) => /stream opened.* user=b\d/.test(l));
    if (opened.length !== STREAMS) throw new Error(`${opened.length} streams logged`);
    const other = opened.filter((l) => !l.includes('transport="h2"'));
    if (other.length) throw new Error(`not h2: ${other.join("\n")}`);
  });

  await check("closing half the streams ends them on the node; the rest keep receiving", async () => {
    await page.evaluate(({ n }) => { for (let i = 0; i < n / 2; i += 1) window.streams[i].close(); }, { n: STREAMS });
    await until("herald holds half the streams", async () => (await metric("herald_sse_connections")) === base + STREAMS / 2, 10000);
    await publish([6]);
    await until("event 6 on the open streams", async () => got.slice(STREAMS / 2).every((l) => l.length === 6), 10000);
    if (got.slice(0, STREAMS / 2).some((l) => l.length !== 5)) throw new Error(`closed streams got more: ${JSON.stringify(got)}`);
  });

  await check("a drain ends the rest and herald exits 0", async () => {
    await stop(herald, "SIGTERM");
    if (herald.exitCode !== 0) throw new Error(`herald exited ${herald.exitCode}\n${herald.log.slice(-2000)}`);
  });

  await browser.close();
}

await run(main, figures);
