// End-to-end behind the real proxy: nginx terminating TLS and HTTP/2 with
// deploy/nginx/herald.conf (or, with PROXY=haproxy, HAProxy with
// deploy/haproxy/haproxy.cfg; only their addresses, ports and certificate
// paths replaced), two herald nodes in Kafka mode behind it over HTTP/1.1, a
// tansu broker, kcat producing, and headless Chromium on https over h2.
//
// Checks, each bounded in time:
//  1. the page's origin is served over h2 through the proxy;
//  2. 10 EventSource streams on that one origin (more than HTTP/1.1's 6 per
//     origin) are all open at once and each gets every event for its user;
//  3. one node is drained (SIGTERM): its streams end, the browser reconnects
//     through the proxy with Last-Event-ID, lands on the other node, and every
//     stream has every event exactly once, in order, including those
//     produced during the drain;
//  4. herald saw the browser's requests as the proxy's forwards: over
//     HTTP/1.1, each stream on herald's own writer (the access log's
//     transport), and with --trusted-proxies the client's address from
//     X-Forwarded-For, not a hop the client wrote.
//
// Env: HERALD_BIN, KCAT_LIBDIR (a librdkafka >= 2.2 for kcat), PROXY (nginx
// or haproxy).
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { check, launchChromium, run, sleep, start, startTansu, stop, until, portOpen } from "./lib.mjs";

const HERALD = process.env.HERALD_BIN;
const KCAT_LIBDIR = process.env.KCAT_LIBDIR;
const BROKER = "127.0.0.1:19192";
const TOPIC = "proxied";
const NODES = [18190, 18191];
const NGINX_PORT = 18443;
const ORIGIN = `https://localhost:${NGINX_PORT}`;
const STREAMS = 10;
const PROXY = process.env.PROXY || "nginx";
const figures = {};

function kcat(records) {
  execFileSync("kcat", ["-P", "-b", BROKER, "-t", TOPIC, "-K", "\t"], {
    input: records.map((r) => r + "\n").join(""),
    env: { ...process.env, LD_LIBRARY_PATH: KCAT_LIBDIR },
    timeout: 30000,
  });
}

async function startHerald(port) {
  const h = start(HERALD, [
    "--listen", `127.0.0.1:${port}`,
    "--kafka-brokers", BROKER, "--kafka-topics", TOPIC,
    "--kafka-metadata-interval", "1s",
    "--kafka-publish-transactions", "false",
    "--shutdown-drain", "500ms",
    "--trusted-proxies", "127.0.0.1",
    "--access-log",
  ], { env: { ...process.env, NO_COLOR: "1" } });
  await until(`herald on ${port} ready`, async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200);
  return h;
}

// The proxy's file in deploy/ with only the site-specific values replaced;
// a value that is not found fails (the file changed shape: update this too).
function siteConfig(work) {
  const [file, swaps] = PROXY === "haproxy"
    ? ["../deploy/haproxy/haproxy.cfg", [
      ["10.0.0.11:8080", `127.0.0.1:${NODES[0]}`],
      ["10.0.0.12:8080", `127.0.0.1:${NODES[1]}`],
      ["bind :443 ssl crt /etc/haproxy/tls/herald.pem", `bind 127.0.0.1:${NGINX_PORT} ssl crt ${path.join(work, "combined.pem")}`],
    ]]
    : ["../deploy/nginx/herald.conf", [
      ["server 10.0.0.11:8080", `server 127.0.0.1:${NODES[0]}`],
      ["server 10.0.0.12:8080", `server 127.0.0.1:${NODES[1]}`],
      ["listen 443 ssl http2;", `listen 127.0.0.1:${NGINX_PORT} ssl http2;`],
      ["/etc/nginx/tls/herald.crt", path.join(work, "cert.pem")],
      ["/etc/nginx/tls/herald.key", path.join(work, "key.pem")],
    ]];
  let conf = readFileSync(new URL(file, import.meta.url), "utf8");
  for (const [from, to] of swaps) {
    if (!conf.includes(from)) throw new Error(`${file} has no "${from}"`);
    conf = conf.split(from).join(to);
  }
  return conf;
}

async function startProxy(work) {
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-days", "1", "-keyout", path.join(work, "key.pem"), "-out", path.join(work, "cert.pem")], { stdio: "ignore" });
  if (PROXY === "haproxy") {
    writeFileSync(path.join(work, "combined.pem"),
      readFileSync(path.join(work, "cert.pem"), "utf8") + readFileSync(path.join(work, "key.pem"), "utf8"));
    writeFileSync(path.join(work, "haproxy.cfg"), siteConfig(work));
    execFileSync("haproxy", ["-c", "-q", "-f", path.join(work, "haproxy.cfg")], { stdio: "pipe" });
    const haproxy = start("haproxy", ["-db", "-f", path.join(work, "haproxy.cfg")]);
    await until("haproxy listening", () => portOpen(NGINX_PORT));
    return haproxy;
  }
  writeFileSync(path.join(work, "herald.conf"), siteConfig(work));
  for (const d of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) mkdirSync(path.join(work, d));
  writeFileSync(path.join(work, "nginx.conf"), `
daemon off;
user root;
worker_processes 1;
pid ${work}/nginx.pid;
error_log ${work}/error.log info;
events { worker_connections 4096; }
http {
  log_format proto '$request $status $server_protocol upstream=$upstream_addr';
  access_log ${work}/access.log proto;
  client_body_temp_path ${work}/body;
  proxy_temp_path ${work}/proxy;
  fastcgi_temp_path ${work}/fastcgi;
  uwsgi_temp_path ${work}/uwsgi;
  scgi_temp_path ${work}/scgi;
  include ${work}/herald.conf;
}
`);
  execFileSync("nginx", ["-t", "-p", work, "-c", path.join(work, "nginx.conf"), "-e", path.join(work, "error.log")], { stdio: "pipe" });
  const nginx = start("nginx", ["-p", work, "-c", path.join(work, "nginx.conf"), "-e", path.join(work, "error.log")]);
  await until("nginx listening", () => portOpen(NGINX_PORT));
  return nginx;
}

// Every stream got exactly 1..n for its user, in order.
function complete(got, n) {
  return got.every((list) => list.length === n && list.every((m, i) => m === i + 1));
}

async function main() {
  const work = mkdtempSync(path.join(tmpdir(), "herald-proxy-e2e-"));
  const tansu = await startTansu(work, BROKER, [[TOPIC, 4]]);
  const nodes = [];
  for (const port of NODES) nodes.push(await startHerald(port));
  const proxy = await startProxy(work);

  const browser = await launchChromium();
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const got = Array.from({ length: STREAMS }, () => []);
  await page.exposeFunction("addMessage", (i, message) => { got[i].push(message.n); });

  await check(`the page's origin is served over h2 through ${PROXY}`, async () => {
    const resp = await page.goto(`${ORIGIN}/healthz`);
    if (resp.status() !== 200) throw new Error(`status ${resp.status()}`);
    const proto = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
    if (proto !== "h2") throw new Error(`protocol ${proto}`);
  });

  await check(`${STREAMS} EventSource streams on one origin, each gets every event for its user`, async () => {
    await page.evaluate(({ n }) => {
      window.streams = [];
      for (let i = 0; i < n; i += 1) {
        // The seed page's code, once per stream (one user each).
        const es = new EventSource(`/api/sse/subscribe/p${i}`);
        es.onmessage = (event) => window.addMessage(i, JSON.parse(event.data));
        window.streams.push(es);
      }
    }, { n: STREAMS });
    await until("every stream open", () => page.evaluate(() => window.streams.every((s) => s.readyState === 1)), 20000);
    const t0 = Date.now();
    const records = [];
    for (let n = 1; n <= 5; n += 1) for (let i = 0; i < STREAMS; i += 1) records.push(`p${i}\t{"n":${n}}`);
    kcat(records);
    await until("5 events on every stream", async () => complete(got, 5), 30000);
    figures.produce_to_all_streams_ms = Date.now() - t0;
    // Where the proxy sent them (each node's access log).
    const opened = nodes.map((h) => h.log.split("\n").filter((l) => /stream opened.* user=p\d/.test(l)));
    figures.streams_per_node = opened.map((lines) => lines.length);
    if (figures.streams_per_node.some((c) => c === 0)) throw new Error(`all streams on one node: ${figures.streams_per_node}`);
    // Proxy to herald over HTTP/1.1, each stream on herald's own writer.
    const other = opened.flat().filter((l) => !l.includes('transport="h1"'));
    if (other.length) throw new Error(`not on herald's writer: ${other.join("\n")}`);
  });

  await check("a node drained (SIGTERM): its streams resume on the other, nothing lost or repeated", async () => {
    const drained = nodes[0];
    const stopped = stop(drained, "SIGTERM");
    // Produced while the node drains and its browsers reconnect.
    const records = [];
    for (let n = 6; n <= 10; n += 1) for (let i = 0; i < STREAMS; i += 1) records.push(`p${i}\t{"n":${n}}`);
    kcat(records);
    await stopped;
    if (drained.exitCode !== 0) throw new Error(`drained node exited ${drained.exitCode}\n${drained.log.slice(-2000)}`);
    // The drained node's streams ended, so nginx logged them: browser to
    // nginx over HTTP/2 (HAProxy: the page's navigation said h2).
    const ended = PROXY === "haproxy" ? [] : await until("nginx's lines for the ended streams", async () => {
      const lines = readFileSync(path.join(work, "access.log"), "utf8").split("\n")
        .filter((l) => l.startsWith("GET /api/sse/subscribe/p") && l.includes(`upstream=127.0.0.1:${NODES[0]}`));
      return lines.length >= figures.streams_per_node[0] && lines;
    }, 10000);
    if (ended.some((l) => !l.includes(" 200 HTTP/2.0 "))) throw new Error(`nginx saw ${ended.join("\n")}`);
    for (let n = 11; n <= 12; n += 1) {
      kcat(Array.from({ length: STREAMS }, (_, i) => `p${i}\t{"n":${n}}`));
    }
    await until("events 1..12 on every stream", async () => complete(got, 12), 30000);
    await sleep(500);
    if (!complete(got, 12)) throw new Error(`after settling: ${JSON.stringify(got)}`);
    const open = await page.evaluate(() => window.streams.filter((s) => s.readyState === 1).length);
    if (open !== STREAMS) throw new Error(`${open} streams open`);
    const m = await (await fetch(`http://127.0.0.1:${NODES[1]}/metrics`)).text();
    const conns = Number((m.match(/^herald_sse_connections (\S+)/m) || [])[1]);
    if (conns !== STREAMS) throw new Error(`the remaining node holds ${conns} streams`);
  });

  await check(`herald takes the client address from ${PROXY}'s X-Forwarded-For (--trusted-proxies)`, async () => {
    // A client on 127.0.0.5 (not a trusted proxy) writes a fake hop; the proxy
    // appends the client's address; herald logs that one.
    const r = spawnSync("curl", ["-sk", "--http2", "-m", "2", "--interface", "127.0.0.5",
      "-H", "X-Forwarded-For: 6.6.6.6", `${ORIGIN}/api/sse/subscribe/probe`], { timeout: 10000 });
    if (!r.stdout.toString().includes("retry:")) throw new Error(`no stream: ${r.stdout}${r.stderr}`);
    const line = await until("the access log line", async () =>
      nodes[1].log.split("\n").find((l) => l.includes("stream opened") && l.includes("user=probe")), 5000);
    if (!line.includes("peer=127.0.0.5:0")) throw new Error(`access log: ${line}`);
  });

  await browser.close();
  await stop(proxy, PROXY === "haproxy" ? "SIGUSR1" : "SIGQUIT");
  await stop(nodes[1]);
  await stop(tansu, "SIGKILL");
}

await run(main, figures);
