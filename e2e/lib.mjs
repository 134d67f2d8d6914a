// What the browser end-to-end scripts share: child processes that are always
// killed, bounded waits, checks counted and reported, Chromium as root, the
// seed page's EventSource code, a tansu broker.
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import net from "node:net";

export const children = new Set();
export const results = { passed: 0, failed: 0 };

export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// Polls `fn` until it returns something truthy, for at most `ms`.
export async function until(what, fn, ms = 30000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

export function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => { s.destroy(); resolve(true); });
    s.on("error", () => resolve(false));
  });
}

// A child process whose output is kept (child.log) and which is killed when
// the script ends.
export function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  child.log = "";
  child.stdout.on("data", (d) => { child.log += d; });
  child.stderr.on("data", (d) => { child.log += d; });
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

export async function stop(child, signal = "SIGTERM") {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.on("exit", r));
  child.kill(signal);
  await Promise.race([exited, sleep(15000)]);
}

export async function check(name, fn) {
  const t = Date.now();
  try {
    await fn();
    results.passed += 1;
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    results.failed += 1;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

// Runs `main`, then kills every child; prints the figures and the count, and
// exits 0 only if every check passed.
export async function run(main, figures) {
  try {
    await main();
  } catch (e) {
    results.failed += 1;
    console.log(`FAIL setup: ${e.stack || e}`);
    for (const c of children) console.log(`--- ${c.spawnargs.join(" ")}\n${c.log.slice(-3000)}`);
  } finally {
    for (const c of children) c.kill("SIGKILL");
  }
  console.log(`figures: ${JSON.stringify(figures)}`);
  console.log(`${results.passed} passed, ${results.failed} failed`);
  process.exit(results.failed === 0 ? 0 : 1);
}

// Debian's Chromium, headless, as root.
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", ...extraArgs],
  });
}

// Opens the seed page's EventSource in `page`, running the seed's code
// unchanged (its addMessage is the page's exposed `addMessage`); also counts
// the stream's errors (window.errors) and keeps it as window.es.
export async function seedPage(page, base, userId) {
  await page.evaluate(({ base, userId }) => {
    const API_BASE_URL = base;
    // --- the seed page's code ---
    const eventSource = new EventSource(`${API_BASE_URL}/api/sse/subscribe/${userId}`);
    eventSource.onmessage = (event) => {
      const newMessage = JSON.parse(event.data);
      window.addMessage(newMessage, event.lastEventId); // addMessage(newMessage)
    };
    // --- end ---
    window.errors = 0;
    eventSource.addEventListener("error", () => { window.errors += 1; });
    window.es = eventSource;
  }, { base, userId });
}

// A tansu broker (sqlite storage in `work`) on `broker` (host:port), with
// `topics` ([name, partitions]) created.
export async function startTansu(work, broker, topics) {
  const tansu = start("tansu", [
    "broker",
    "--listener-url", `tcp://${broker}`,
    "--advertised-listener-url", `tcp://${broker}`,
    "--storage-engine", "sqlite://tansu.db",
  ], { cwd: work });
  await until("tansu listening", () => portOpen(Number(broker.split(":")[1])));
  for (const [name, partitions] of topics) {
    execFileSync("tansu", ["topic", "create", name, "--partitions", String(partitions), "--broker", `tcp://${broker}`], { timeout: 30000 });
  }
  return tansu;
}
