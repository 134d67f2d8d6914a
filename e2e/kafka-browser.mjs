// End-to-end: a producer writes to Kafka, the seed page's EventSource shows it.
//
// Real parts only: a tansu broker process (sqlite storage), kcat producing
// keyed records, herald binaries in Kafka mode, and headless Chromium running
// exactly the seed page's EventSource + JSON.parse(event.data) code.
//
// Checks, each bounded in time:
//  1. kcat -> Kafka -> herald -> browser onmessage (and the time it takes);
//  2. herald is restarted while records keep being produced: the page's own
//     automatic reconnect (Last-Event-ID) resumes with no gap and no duplicate;
//  3. a second herald node on the same topic delivers the same user's events;
//  4. the demo page at / publishes through Kafka and shows the event;
//  5. the seed page served from its own origin (as in the seed system)
//     subscribes and publishes across origins (--cors-origins), while a page
//     of an origin not on the list is refused by the browser.
//
// Env: HERALD_BIN (herald binary), KCAT_LIBDIR (a librdkafka >= 2.2 for kcat),
// OUT_DIR (screenshots). Ends with "N passed, N failed".
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import http from "node:http";
import path from "node:path";

const HERALD = process.env.HERALD_BIN;
const KCAT_LIBDIR = process.env.KCAT_LIBDIR;
const OUT = process.env.OUT_DIR || "e2e/out";
const BROKER = "127.0.0.1:19092";
const TOPIC = "messages";
const NODE_A = 18090;
const NODE_B = 18091;
// Two static page origins: the allowed one and another.
const PAGE_ORIGIN_PORT = 18095;
const OTHER_ORIGIN_PORT = 18096;
const CORS = ["--cors-origins", `http://127.0.0.1:${PAGE_ORIGIN_PORT}`];
mkdirSync(OUT, { recursive: true });

const children = new Set();
let passed = 0;
let failed = 0;
const figures = {};

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

async function until(what, fn, ms = 30000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => { s.destroy(); resolve(true); });
    s.on("error", () => resolve(false));
  });
}

function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  child.log = "";
  child.stdout.on("data", (d) => { child.log += d; });
  child.stderr.on("data", (d) => { child.log += d; });
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

async function stop(child, signal = "SIGTERM") {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.on("exit", r));
  child.kill(signal);
  await Promise.race([exited, sleep(15000)]);
}

async function startHerald(port, extra = []) {
  const h = start(HERALD, [
    "--listen", `127.0.0.1:${port}`,
    "--kafka-brokers", BROKER, "--kafka-topics", TOPIC,
    "--kafka-metadata-interval", "1s", "--shutdown-drain", "200ms",
    // tansu 0.6 has no transactions (EndTxn): per-event publishing.
    "--kafka-publish-transactions", "false",
    ...extra,
  ], { env: { ...process.env, NO_COLOR: "1" } });
  await until(`herald on ${port} ready`, async () => {
    const r = await fetch(`http://127.0.0.1:${port}/readyz`);
    return r.status === 200;
  });
  return h;
}

function kcat(records, headers = []) {
  const args = ["-P", "-b", BROKER, "-t", TOPIC, "-K", "\t"];
  for (const h of headers) args.push("-H", h);
  execFileSync("kcat", args, {
    input: records.map((r) => r + "\n").join(""),
    env: { ...process.env, LD_LIBRARY_PATH: KCAT_LIBDIR },
    timeout: 30000,
  });
}

async function check(name, fn) {
  const t = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

async function main() {
  const work = mkdtempSync(path.join(tmpdir(), "herald-e2e-"));
  const tansu = start("tansu", [
    "broker",
    "--listener-url", `tcp://${BROKER}`,
    "--advertised-listener-url", `tcp://${BROKER}`,
    "--storage-engine", "sqlite://tansu.db",
  ], { cwd: work });
  await until("tansu listening", () => portOpen(19092));
  execFileSync("tansu", ["topic", "create", TOPIC, "--partitions", "4", "--broker", `tcp://${BROKER}`], { timeout: 30000 });

  let nodeA = await startHerald(NODE_A, ["--kafka-start", "replay-window", ...CORS]);
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage();
  const received = [];
  await page.exposeFunction("addMessage", (message, lastEventId) => {
    received.push({ message, lastEventId, at: Date.now() });
  });
  // A page of herald's origin, running the seed's code unchanged.
  await page.goto(`http://127.0.0.1:${NODE_A}/healthz`);
  await page.evaluate(({ base, userId }) => {
    const API_BASE_URL = base;
    // --- the seed page's code ---
    const eventSource = new EventSource(`${API_BASE_URL}/api/sse/subscribe/${userId}`);
    eventSource.onmessage = (event) => {
      const newMessage = JSON.parse(event.data);
      window.addMessage(newMessage, event.lastEventId); // addMessage(newMessage)
    };
    // --- end ---
    window.es = eventSource;
  }, { base: `http://127.0.0.1:${NODE_A}`, userId: "123" });
  await until("EventSource open", () => page.evaluate(() => window.es.readyState === 1));

  await check("kcat -> Kafka -> herald -> browser onmessage", async () => {
    const t0 = Date.now();
    kcat([`123\t{"text":"hello from kafka","n":1}`]);
    const m = await until("message 1", async () => received.find((r) => r.message.n === 1), 20000);
    if (m.message.text !== "hello from kafka") throw new Error(JSON.stringify(m));
    if (!/^messages:\d+:\d+$/.test(m.lastEventId)) throw new Error(`id ${m.lastEventId}`);
    figures.produce_to_onmessage_ms = m.at - t0;
  });

  await check("herald restart: the page reconnects by itself and resumes with no gap", async () => {
    await stop(nodeA);
    // Produced while herald is down.
    kcat([2, 3, 4].map((n) => `123\t{"n":${n}}`));
    nodeA = await startHerald(NODE_A, ["--kafka-start", "replay-window", ...CORS]);
    kcat([`123\t{"n":5}`]);
    await until("messages 2..5", async () => received.some((r) => r.message.n === 5), 30000);
    const ns = received.map((r) => r.message.n);
    if (JSON.stringify(ns) !== JSON.stringify([1, 2, 3, 4, 5])) throw new Error(`got ${ns}`);
    const reconnected = await page.evaluate(() => window.es.readyState);
    if (reconnected !== 1) throw new Error(`readyState ${reconnected}`);
  });

  await check("two herald nodes on one topic both deliver the user's events", async () => {
    const nodeB = await startHerald(NODE_B);
    const ctrl = new AbortController();
    const resp = await fetch(`http://127.0.0.1:${NODE_B}/api/sse/subscribe/123`, { signal: ctrl.signal });
    const reader = resp.body.getReader();
    let text = "";
    kcat([`123\t{"n":6}`]);
    await until("node B got n=6", async () => {
      const { value } = await reader.read();
      text += new TextDecoder().decode(value);
      return text.includes(`data: {"n":6}`);
    }, 20000);
    await until("node A got n=6", async () => received.some((r) => r.message.n === 6), 20000);
    ctrl.abort();
    await stop(nodeB);
  });

  await check("demo page publishes through Kafka and shows the event", async () => {
    const demo = await browser.newPage();
    await demo.goto(`http://127.0.0.1:${NODE_A}/`);
    await until("demo connected", () => demo.evaluate(() => document.getElementById("status").textContent === "open"));
    await demo.fill("#data", `{"text": "from the demo form"}`);
    await demo.click("#publish");
    await until("demo shows its event", () =>
      demo.evaluate(() => document.getElementById("events").textContent.includes("from the demo form")), 20000);
    const published = await demo.evaluate(() => document.getElementById("published").textContent);
    if (!/published messages:\d+:\d+/.test(published)) throw new Error(published);
    await demo.screenshot({ path: path.join(OUT, "demo.png"), fullPage: true });
  });

  await check("seed page on its own origin: CORS lets it subscribe and publish; other origins are refused", async () => {
    const html = "<!doctype html><title>seed page</title><p>seed</p>";
    const servers = [PAGE_ORIGIN_PORT, OTHER_ORIGIN_PORT].map((port) => {
      const srv = http.createServer((_, res) => { res.writeHead(200, { "content-type": "text/html" }); res.end(html); });
      srv.listen(port, "127.0.0.1");
      return srv;
    });
    try {
      const seed = await browser.newPage();
      const got = [];
      await seed.exposeFunction("addMessage", (m) => { got.push(m); });
      await seed.goto(`http://127.0.0.1:${PAGE_ORIGIN_PORT}/`);
      await seed.evaluate(({ base, userId }) => {
        const API_BASE_URL = base;
        // --- the seed page's code ---
        const eventSource = new EventSource(`${API_BASE_URL}/api/sse/subscribe/${userId}`);
        eventSource.onmessage = (event) => {
          const newMessage = JSON.parse(event.data);
          window.addMessage(newMessage);
        };
        // --- end ---
        window.es = eventSource;
      }, { base: `http://127.0.0.1:${NODE_A}`, userId: "cors-user" });
      await until("cross-origin EventSource open", () => seed.evaluate(() => window.es.readyState === 1));
      // A JSON POST from the page: the browser sends a preflight first.
      const status = await seed.evaluate(async (base) => {
        const r = await fetch(`${base}/api/publish`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ user: "cors-user", data: { text: "across origins" } }),
        });
        return r.status;
      }, `http://127.0.0.1:${NODE_A}`);
      if (status !== 200) throw new Error(`publish from the page: ${status}`);
      await until("cross-origin event", async () => got.some((m) => m.text === "across origins"), 20000);

      const other = await browser.newPage();
      await other.goto(`http://127.0.0.1:${OTHER_ORIGIN_PORT}/`);
      const refused = await other.evaluate(async (base) => {
        const es = new EventSource(`${base}/api/sse/subscribe/intruder`);
        const closed = await new Promise((r) => { es.onerror = () => r(es.readyState); setTimeout(() => r("no error"), 5000); });
        es.close();
        let publish;
        try {
          await fetch(`${base}/api/publish`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
          publish = "allowed";
        } catch (e) {
          publish = "blocked";
        }
        return { closed, publish };
      }, `http://127.0.0.1:${NODE_A}`);
      if (refused.closed !== 2 || refused.publish !== "blocked") throw new Error(JSON.stringify(refused));
    } finally {
      for (const srv of servers) srv.close();
    }
  });

  await browser.close();
  await stop(nodeA);
  await stop(tansu, "SIGKILL");
}

try {
  await main();
} catch (e) {
  failed += 1;
  console.log(`FAIL setup: ${e.stack || e}`);
  for (const c of children) console.log(`--- ${c.spawnargs.join(" ")}\n${c.log.slice(-3000)}`);
} finally {
  for (const c of children) c.kill("SIGKILL");
}
console.log(`figures: ${JSON.stringify(figures)}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
