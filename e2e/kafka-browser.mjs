// End-to-end: a producer writes to Kafka, the seed page's EventSource shows it.
//
// Real parts only: a tansu broker process (sqlite storage), kcat producing
// keyed records, herald binaries in Kafka mode, and headless Chromium running
// exactly the seed page's EventSource + JSON.parse(event.data) code.
//
// Checks, each bounded in time:
//  1. kcat -> Kafka -> herald -> browser onmessage (and the time it takes);
//  2. herald is killed (SIGKILL) and restarted with its defaults while records
//     keep being produced: the page's own automatic reconnect (Last-Event-ID,
//     a cursor) resumes with no gap and no duplicate (caught up from Kafka);
//  3. a second herald node on the same topic delivers the same user's events;
//  4. the demo page at / publishes through Kafka and shows the event;
//  5. the seed page served from its own origin (as in the seed system)
//     subscribes and publishes across origins (--cors-origins), while a page
//     of an origin not on the list is refused by the browser;
//  6. since= starts a stream from a time (offsets for times on the broker);
//  7. a client hops between two nodes 20 times while user, topic and unkeyed
//     broadcast records flow over 8 partitions: nothing lost, nothing
//     repeated, per-partition order;
//  8. the seed page goes offline (context.setOffline) while more than the
//     node's replay buffer flows, comes back: every message shown once, in
//     order;
//  9. topics not written for herald (e2e/schemas.py): Avro, Protobuf and
//     JSON Schema records from confluent-kafka's real serializers, through a
//     schema registry and a mapping file, reach the seed page as JSON with a
//     field dropped; bad records go to the dead-letter topic.
//
// Env: HERALD_BIN (herald binary), KCAT_LIBDIR (a librdkafka >= 2.2 for kcat),
// OUT_DIR (screenshots). Ends with "N passed, N failed".
import { execFileSync, spawn } from "node:child_process";
import { check, children, launchChromium, run, seedPage, sleep, start, startTansu, stop, until } from "./lib.mjs";
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
const HOPS_TOPIC = "hops";
const NODE_C = 18092;
const NODE_D = 18093;
const PROXY_PORT = 18097;
const NODE_A = 18090;
const NODE_B = 18091;
// Two static page origins: the allowed one and another.
const PAGE_ORIGIN_PORT = 18095;
const OTHER_ORIGIN_PORT = 18096;
const CORS = ["--cors-origins", `http://127.0.0.1:${PAGE_ORIGIN_PORT}`];
mkdirSync(OUT, { recursive: true });

const figures = {};

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

function kcat(records, headers = [], topic = TOPIC, partition = null) {
  const args = ["-P", "-b", BROKER, "-t", topic, "-K", "\t"];
  if (partition !== null) args.push("-p", String(partition));
  for (const h of headers) args.push("-H", h);
  execFileSync("kcat", args, {
    input: records.map((r) => r + "\n").join(""),
    env: { ...process.env, LD_LIBRARY_PATH: KCAT_LIBDIR },
    timeout: 30000,
  });
}

async function main() {
  const work = mkdtempSync(path.join(tmpdir(), "herald-e2e-"));
  const tansu = await startTansu(work, BROKER, [[TOPIC, 4]]);

  let nodeA = await startHerald(NODE_A, ["--kafka-start", "replay-window", ...CORS]);
  const browser = await launchChromium();
  const page = await browser.newPage();
  const received = [];
  await page.exposeFunction("addMessage", (message, lastEventId) => {
    received.push({ message, lastEventId, at: Date.now() });
  });
  // A page of herald's origin, running the seed's code unchanged.
  await page.goto(`http://127.0.0.1:${NODE_A}/healthz`);
  await seedPage(page, `http://127.0.0.1:${NODE_A}`, "123");
  await until("EventSource open", () => page.evaluate(() => window.es.readyState === 1));

  await check("kcat -> Kafka -> herald -> browser onmessage", async () => {
    const t0 = Date.now();
    kcat([`123\t{"text":"hello from kafka","n":1}`]);
    const m = await until("message 1", async () => received.find((r) => r.message.n === 1), 20000);
    if (m.message.text !== "hello from kafka") throw new Error(JSON.stringify(m));
    // The id is a cursor: the node's position on every partition.
    if (!/^c\.[A-Za-z0-9_-]+$/.test(m.lastEventId)) throw new Error(`id ${m.lastEventId}`);
    figures.produce_to_onmessage_ms = m.at - t0;
  });

  await check("herald killed (SIGKILL) and restarted with its defaults: the page resumes with no gap", async () => {
    await stop(nodeA, "SIGKILL");
    // Produced while herald is down.
    kcat([2, 3, 4].map((n) => `123\t{"n":${n}}`));
    // Defaults: starts live at "latest"; the page's cursor is caught up from Kafka.
    nodeA = await startHerald(NODE_A, CORS);
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
      await seedPage(seed, `http://127.0.0.1:${NODE_A}`, "cors-user");
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

  await check("since= starts a stream from a time (offsets for times on the broker)", async () => {
    kcat([`since\t{"n":0}`]);
    await sleep(1200);
    const at = Date.now();
    await sleep(1200);
    kcat([1, 2, 3].map((n) => `since\t{"n":${n}}`));
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 20000);
    const got = [];
    try {
      for await (const ev of sse(NODE_A, `/api/sse/subscribe/since?since=${at}`, null, ctrl.signal)) {
        if (ev.data === null) continue;
        if (ev.event !== "message") throw new Error(`${ev.event} ${ev.data}`);
        got.push(JSON.parse(ev.data).n);
        if (got.length === 3) break;
      }
    } finally {
      clearTimeout(timer);
      ctrl.abort();
    }
    if (JSON.stringify(got) !== "[1,2,3]") throw new Error(`got ${got}`);
  });

  await check("a client hops between two nodes 20 times over 8 partitions: nothing lost or repeated", async () => {
    execFileSync("tansu", ["topic", "create", HOPS_TOPIC, "--partitions", "8", "--broker", `tcp://${BROKER}`], { timeout: 30000 });
    const small = ["--kafka-topics", HOPS_TOPIC, "--replay-max-events", "30"];
    const nodeC = await startHerald(NODE_C, small);
    const nodeD = await startHerald(NODE_D, small);
    try {
      const { got, total, forU } = await hops([NODE_C, NODE_D], 20);
      const seen = new Set(got);
      if (seen.size !== got.length) throw new Error(`${got.length - seen.size} repeated`);
      const missing = forU.filter((n) => !seen.has(n));
      if (missing.length) throw new Error(`missing ${missing.length} of ${forU.length}: ${missing.slice(0, 10)}`);
      if (got.length !== forU.length) throw new Error(`got ${got.length}, want ${forU.length}`);
      // User records share a partition, as do the topic's: each in order.
      for (const kind of [0, 1]) {
        const seq = got.filter((n) => n % 4 === kind);
        if (seq.some((n, i) => i > 0 && n < seq[i - 1])) throw new Error(`kind ${kind} out of order: ${seq}`);
      }
      figures.hops_records = total;
      figures.hops_delivered = got.length;
    } finally {
      await stop(nodeC);
      await stop(nodeD);
    }
  });

  await check("the seed page offline while more than the buffer flows: every message once, in order", async () => {
    const small = await startHerald(NODE_C, ["--replay-max-events", "5", "--sse-retry", "500ms"]);
    // The page reaches herald through a relay that "the network" can cut:
    // going offline drops its connections, as a phone leaving a network does.
    const relay = cuttable(NODE_C, PROXY_PORT);
    try {
      const context = await browser.newContext();
      const seed = await context.newPage();
      const got = [];
      await seed.exposeFunction("addMessage", (m) => { got.push(m.n); });
      await seed.goto(`http://127.0.0.1:${PROXY_PORT}/healthz`);
      await seedPage(seed, `http://127.0.0.1:${PROXY_PORT}`, "offline");
      await until("EventSource open", () => seed.evaluate(() => window.es.readyState === 1));
      kcat([0, 1, 2].map((n) => `offline\t{"n":${n}}`));
      await until("first messages", async () => got.length === 3, 20000);
      await context.setOffline(true);
      relay.cut();
      await until("the page lost its stream", () => seed.evaluate(() => window.errors > 0), 20000);
      // 8x the node's replay buffer while the page is offline.
      kcat(Array.from({ length: 40 }, (_, i) => `offline\t{"n":${i + 3}}`));
      await sleep(1500);
      await context.setOffline(false);
      await until("all 43 messages", async () => got.length >= 43, 30000);
      await sleep(500);
      const want = Array.from({ length: 43 }, (_, i) => i);
      if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`got ${got}`);
      figures.offline_page_errors = await seed.evaluate(() => window.errors);
      await context.close();
    } finally {
      relay.close();
      await stop(small);
    }
  });

  await check("schema-registry topics (Avro, Protobuf, JSON Schema) reach the seed page, mapped by a field", async () => {
    const py = spawn("python3", ["e2e/schemas.py", "--controlled"], {
      stdio: ["pipe", "pipe", "inherit"],
      env: { ...process.env, HERALD_BIN: HERALD, BROKER, SCHEMA_NODE_PORT: "18099" },
    });
    children.add(py);
    let out = "";
    py.stdout.on("data", (d) => { out += d; process.stdout.write(`  [schemas.py] ${d}`); });
    const exited = new Promise((r) => py.on("exit", (code) => { children.delete(py); r(code); }));
    const port = await until("schemas.py ready", async () => (out.match(/ready (\d+)/) || [])[1], 90000);
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    const shown = [];
    await p.exposeFunction("addMessage", (message) => { shown.push(message); });
    await p.goto(`http://127.0.0.1:${port}/healthz`);
    await seedPage(p, `http://127.0.0.1:${port}`, "c-42");
    await until("EventSource open", () => p.evaluate(() => window.es.readyState === 1));
    py.stdin.write("go\n");
    const code = await Promise.race([exited, sleep(240000).then(() => "timeout")]);
    await ctx.close();
    const results = JSON.parse((out.match(/RESULTS (.*)/) || [])[1] || "{}");
    figures.schemas = results.figures;
    if (code !== 0) throw new Error(`schemas.py exited ${code}: ${JSON.stringify(results)}`);
    const ids = ["o-1", "o-2", "o-3"].map((id) => shown.find((m) => m.id === id));
    if (ids.some((m) => !m) || ids.some((m) => "card" in m)) throw new Error(`page showed ${JSON.stringify(shown)}`);
    if (ids[0].total !== "12.30" || ids[1].totalCents !== "1230" || ids[2].total !== 12.3) {
      throw new Error(`page showed ${JSON.stringify(ids)}`);
    }
  });

  await browser.close();
  await stop(nodeA);
  await stop(tansu, "SIGKILL");
}

// A TCP relay from `listen` to herald on `port` whose connections can all be
// dropped at once (cut), while it keeps accepting new ones.
function cuttable(port, listen) {
  const open = new Set();
  const srv = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    client.pipe(upstream);
    upstream.pipe(client);
    const pair = { client, upstream };
    open.add(pair);
    const drop = () => { client.destroy(); upstream.destroy(); open.delete(pair); };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
  });
  srv.listen(listen, "127.0.0.1");
  return {
    cut() { for (const p of [...open]) { p.client.destroy(); p.upstream.destroy(); open.delete(p); } },
    close() { this.cut(); srv.close(); },
  };
}

// A stream's events as { id, data } objects, from a fetch body.
async function* sse(port, path, lastEventId, signal) {
  const headers = lastEventId ? { "last-event-id": lastEventId } : {};
  const resp = await fetch(`http://127.0.0.1:${port}${path}`, { headers, signal });
  if (resp.status !== 200) throw new Error(`subscribe: ${resp.status}`);
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const ev = { id: null, event: "message", data: null };
      for (const line of block.split("\n")) {
        if (line.startsWith("id: ")) ev.id = line.slice(4);
        else if (line.startsWith("event: ")) ev.event = line.slice(7);
        else if (line.startsWith("data: ")) ev.data = line.slice(6);
      }
      if (ev.data !== null || ev.id !== null) yield ev;
    }
  }
}

// Records on HOPS_TOPIC while a client hops between `ports`: record n is for
// user u (keyed), topic news (sse-topic header), everyone (no key) or user v.
async function hops(ports, count) {
  const path = "/api/sse/subscribe/u?topic=news";
  // Where the client starts: the preamble's id (before any record).
  let last = null;
  {
    const ctrl = new AbortController();
    for await (const ev of sse(ports[0], path, null, ctrl.signal)) {
      last = ev.id;
      break;
    }
    ctrl.abort();
  }
  const forU = [];
  let n = 0;
  let producing = true;
  const producer = (async () => {
    while (producing && n < 2000) {
      const batch = { u: [], news: [], all: [], v: [] };
      for (let i = 0; i < 40; i += 1, n += 1) {
        const kind = ["u", "news", "all", "v"][n % 4];
        if (kind !== "v") forU.push(n);
        batch[kind].push(n);
      }
      kcat(batch.u.map((k) => `u\t{"n":${k}}`), [], HOPS_TOPIC);
      kcat(batch.news.map((k) => `x\t{"n":${k}}`), ["sse-topic=news"], HOPS_TOPIC);
      // Unkeyed: any partition.
      execFileSync("kcat", ["-P", "-b", BROKER, "-t", HOPS_TOPIC], {
        input: batch.all.map((k) => `{"n":${k}}\n`).join(""),
        env: { ...process.env, LD_LIBRARY_PATH: KCAT_LIBDIR },
        timeout: 30000,
      });
      kcat(batch.v.map((k) => `v\t{"n":${k}}`), [], HOPS_TOPIC);
      await sleep(50);
    }
  })();
  const got = [];
  for (let hop = 0; hop < count; hop += 1) {
    const ctrl = new AbortController();
    const stopAt = Date.now() + 300 + 40 * hop;
    const timer = setTimeout(() => ctrl.abort(), stopAt - Date.now());
    try {
      for await (const ev of sse(ports[hop % 2], path, last, ctrl.signal)) {
        if (ev.data === null) continue; // the preamble
        if (ev.event !== "message") throw new Error(`hop ${hop}: ${ev.event} ${ev.data}`);
        got.push(JSON.parse(ev.data).n);
        last = ev.id;
      }
    } catch (e) {
      if (e.name !== "AbortError") throw e;
    } finally {
      clearTimeout(timer);
    }
  }
  producing = false;
  await producer;
  // The rest, on the first node.
  const ctrl = new AbortController();
  const deadline = setTimeout(() => ctrl.abort(), 30000);
  try {
    for await (const ev of sse(ports[0], path, last, ctrl.signal)) {
      if (ev.data === null) continue;
      got.push(JSON.parse(ev.data).n);
      if (got.length >= forU.length) break;
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  } finally {
    clearTimeout(deadline);
    ctrl.abort();
  }
  return { got, total: n, forU };
}

await run(main, figures);
