// Side-by-side benchmark: livequery and parse-server's own LiveQuery server, one after the
// other, on the same machine, each pinned to the same core, fed byte-identical messages
// through Redis by the load generator (crates/loadgen). See tests/bench/README.md.
//
//   node tests/bench/bench.mjs [--smoke] [--targets livequery,reference,ceiling]
//                              [--workloads w0,w2,broadcast,w3,w7,sweep,match]
//                              [--write BENCHMARKS.md] [--json FILE] [--include FILE]
//
// --smoke: tiny bounded workloads that prove the tools work (every run must pass the oracle);
// the figures are not performance figures. Everything runs on 127.0.0.1 and is stopped
// afterwards; every run has bounded counts and durations. The `ceiling` target is the
// loopback ceiling writer (`lq-loadgen ceiling`, on Redis alone): it runs the broadcast
// workloads only (sweep, broadcast).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startStack } from '../conformance/stack.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const smoke = flag('--smoke');
const targets = option('--targets', 'livequery,reference,ceiling').split(',');
const workloads = option('--workloads', 'w0,w2,broadcast,w3,w7,sweep,match').split(',');
const writeTo = option('--write', undefined);
// --priority N: renice the server under test (or the ceiling writer), its Redis and the
// generator to N (e.g. -10; needs root) so that other work on a shared machine disturbs the
// figures less. Off by default; the tables say when it was used.
const priority = option('--priority', undefined);
// --include FILE: the results of an earlier run (its --json file) are shown with this run's,
// for targets this run did not measure (e.g. the reference measured once, livequery again
// after a change); the tables say where and when those rows were measured.
const includeFrom = option('--include', undefined);
const jsonOut = option('--json', path.join(root, 'target', 'bench', smoke ? 'smoke.json' : 'results.json'));
const profile = smoke ? 'debug' : 'release';
const livequeryBin = process.env.LIVEQUERY_BIN ?? path.join(root, 'target', profile, 'livequery');
const loadgenBin = process.env.LOADGEN_BIN ?? path.join(root, 'target', profile, 'lq-loadgen');
// The server under test gets one core; Redis, PostgreSQL, parse-server and the generator the
// other. On a one-core machine everything shares core 0.
const cpus = os.availableParallelism();
const SUT_CPU = cpus > 1 ? '1' : '0';
const OTHER_CPU = '0';
const CLASS = 'LQBench';

function log(...parts) {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...parts);
}

// Linux nice values are per thread: every thread of the process is reniced.
function renice(pid) {
  if (priority === undefined || !pid) return;
  try {
    const threads = fs.readdirSync(`/proc/${pid}/task`);
    execFileSync('renice', ['-n', priority, '-p', ...threads], { stdio: 'ignore' });
  } catch (error) {
    log(`renice ${priority} of ${pid} failed: ${error.message}`);
  }
}

// Processes started here get the priority from their start (their threads inherit it).
const niced = (command, argv) => (priority === undefined ? [command, argv] : ['nice', ['-n', priority, command, ...argv]]);

// The Redis of a stack, found by its port (for --priority).
function reniceRedis(redisUrl) {
  if (priority === undefined) return;
  const port = new URL(redisUrl).port;
  try {
    for (const pid of execFileSync('pgrep', ['-f', `redis-server 127.0.0.1:${port}`], { encoding: 'utf8' }).split('\n').filter(Boolean)) renice(pid);
  } catch {
    log(`no redis-server found on port ${port} to renice`);
  }
}

function runLoadgen(stack, params) {
  const argv = ['run', '--url', `${stack.env.LQ_URL}/`, '--redis', stack.env.REDIS_URL,
    '--app-id', stack.env.APP_ID, '--class', CLASS, '--server-pid', String(stack.lqPid)];
  if (stack.env.JS_KEY) argv.push('--js-key', stack.env.JS_KEY);
  for (const [key, value] of Object.entries(params)) argv.push(`--${key}`, String(value));
  log(`lq-loadgen ${argv.slice(1).join(' ')}`);
  return new Promise((resolve, reject) => {
    const child = spawn(...niced('taskset', ['-c', OTHER_CPU, loadgenBin, ...argv]), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`lq-loadgen exited with ${code}: ${err.slice(-2000)}`));
      try {
        resolve({ argv: ['lq-loadgen', ...argv], ...JSON.parse(out) });
      } catch (error) {
        reject(new Error(`lq-loadgen printed no report: ${error.message}\n${err.slice(-2000)}`));
      }
    });
  });
}

async function createClass(stack) {
  const response = await fetch(`${stack.env.PARSE_SERVER_URL}/schemas/${CLASS}`, {
    method: 'POST',
    headers: { 'X-Parse-Application-Id': stack.env.APP_ID, 'X-Parse-Master-Key': stack.env.MASTER_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({
      className: CLASS,
      fields: { room: { type: 'Number' }, score: { type: 'Number' }, seq: { type: 'Number' }, sentAt: { type: 'Number' }, body: { type: 'String' }, tag: { type: 'Number' } },
    }),
  });
  if (!response.ok) throw new Error(`creating ${CLASS}: ${response.status} ${await response.text()}`);
}

async function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function rssKb(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

// ---- workload plans --------------------------------------------------------------------------
// Counts are bounded per target: parse-server's LiveQuery server is orders of magnitude slower,
// so it gets fewer events (its figures are rates, not totals).
const ref = (target) => target === 'reference';

// Distinct equality queries at every point, and the shared query (everyone on `{}`) at the
// largest one: RSS per connection for both, and the set-up time of connect + subscribe.
function planW0(target) {
  // 19,600: the most livequery accepts under this machine's 20,000-file cap (it keeps 128
  // descriptors for itself and a margin of 256 connections for HTTP clients).
  const points = smoke ? [100] : [1000, 5000, 10000, 19600];
  const idle = { 'idle-seconds': smoke ? 1 : 10, 'settle-seconds': smoke ? 1 : 5 };
  const plans = points.map((c) => ({ workload: 'W0', label: `idle ${c}, distinct`, params: { connections: c, query: 'distinct', rooms: 1000000, ...idle } }));
  const largest = points[points.length - 1];
  plans.push({ workload: 'W0', label: `idle ${largest}, shared`, params: { connections: largest, query: 'broadcast', rooms: 1, ...idle } });
  return plans;
}

function planW2(target) {
  const sizes = smoke ? [100] : [1000, 10000, 50000];
  const selectivities = smoke ? ['zero', 0.1] : ['zero', 0.01, 1];
  const runs = [];
  for (const n of sizes) {
    const connections = Math.min(n, 1000);
    for (const sel of selectivities) {
      const rooms = sel === 'zero' ? 1 : Math.round(1 / sel);
      const perEvent = sel === 'zero' ? 0 : n / rooms;
      let events;
      if (smoke) events = 100;
      else if (ref(target)) events = sel === 'zero' ? Math.max(10, Math.round(4e5 / n)) : Math.max(5, Math.min(400, Math.round(1e5 / Math.max(perEvent, 1) / Math.max(1, n / 1000))));
      else events = sel === 'zero' ? 300000 : Math.max(50, Math.min(200000, Math.round(3e6 / perEvent)));
      runs.push({
        workload: 'W2', label: `${n} distinct, sel ${sel === 'zero' ? 0 : sel}`,
        params: { connections, 'subs-per-conn': n / connections, query: 'distinct', rooms, ...(sel === 'zero' ? { selectivity: 'zero' } : {}), events, rate: 0 },
      });
    }
  }
  return runs;
}

function planBroadcast(target) {
  const connections = smoke ? 50 : 1000;
  const events = smoke ? 50 : ref(target) ? 150 : 4000;
  return [{ workload: 'broadcast', label: `${connections} conns, 256 B`, params: { connections, query: 'broadcast', rooms: 1, events, rate: 0, 'object-bytes': 256 } }];
}

// W3 runs at fixed rates derived from a maximum measured first on the same configuration.
const W3_BASE = () => ({ connections: smoke ? 100 : 1000, query: 'distinct', rooms: smoke ? 10 : 100 });

function planW7(target, broadcastMax) {
  const connections = smoke ? 100 : 1000;
  const rate = Math.max(1, Math.round((broadcastMax ?? 100) * 0.5));
  const seconds = smoke ? 2 : 10;
  return [{ workload: 'W7', label: `1 % stalled, ${connections} conns, 1 KB at ${rate} ev/s`, params: { connections, query: 'broadcast', rooms: 1, events: rate * seconds, rate, 'object-bytes': 1024, 'stall-fraction': 0.01 } }];
}

// ---- sweeps ----------------------------------------------------------------------------------
// An open-loop sweep publishes at a steady rate for a few seconds per step, the rate rising
// geometrically while the step is sustained: the generator published at ≥ 90 % of the rate,
// the oracle is clean and p99 < 100 ms. A step published below 90 % of its rate, or one that
// failed while the generator used more than 90 % of its core, is generator-limited: it says
// nothing about the server. One step between the last sustained rate and the first failed one
// refines the figure.
const SWEEP_P99_MS = 100;
// The latency goal at moderate load: p99 publish → receipt.
const LATENCY_GOAL_MS = 5;

function judge(r) {
  const rate = r.rate_requested;
  const busy = r.publish_seconds + r.drain_seconds;
  const generatorShare = busy > 0 ? r.generator.cpu_seconds / busy : 0;
  // A rate that was not offered says nothing about the server.
  if (r.publish_rate < 0.9 * rate) return 'generator-limited';
  // Everything delivered in time is sustained even when the generator was busy: a busy
  // generator reads late, which only adds to the latency it measures. A busy generator only
  // leaves a failed step unexplained (the server, or the generator reading too slowly).
  if (r.ok && r.latency_ms.p99 < SWEEP_P99_MS) return 'sustained';
  if (generatorShare > 0.9) return 'generator-limited';
  if (!r.ok) return 'oracle';
  return 'p99';
}

// CPU seconds of a process so far (utime + stime of /proc/PID/stat, 100 ticks a second).
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

// Waits until the server has worked off the backlog of a failed step (its CPU quiet for
// half a second), so that the next step's fresh subscriptions do not receive the old step's
// events; false when it is still busy after `limitMs`.
async function waitQuiet(pid, limitMs = 120_000) {
  if (!fs.existsSync(`/proc/${pid}`)) return false;
  const until = Date.now() + limitMs;
  let previous = cpuSeconds(pid);
  while (Date.now() < until) {
    await sleep(500);
    if (!fs.existsSync(`/proc/${pid}`)) {
      serverExits.push(`the server under test (pid ${pid}) exited during a sweep; the runs after it were not made`);
      log(serverExits[serverExits.length - 1]);
      return false;
    }
    const now = cpuSeconds(pid);
    if (now - previous <= 0.02) return true;
    previous = now;
  }
  return false;
}

async function sweep(run, { workload, family, params, start, factor, maxSteps, seconds, serverPid }) {
  // After a failed step the server may still be busy with its backlog.
  const settle = async (r) => {
    if (r.sweep.verdict === 'sustained') return true;
    const quiet = await waitQuiet(serverPid);
    if (!quiet) log(`${family}: the server is still busy 120 s after a failed step; the sweep ends`);
    return quiet;
  };
  const step = async (rate, kind) => {
    const label = `${family}, ${kind} ${fmt(rate)} ev/s`;
    const r = await run({ workload, label, params: { ...params, rate, events: Math.max(20, Math.round(rate * seconds)) } });
    r.sweep = { family, kind, rate, verdict: judge(r) };
    return r;
  };
  let best;
  let failed;
  let rate = start;
  // A first step that fails: divide the rate by 4 (at most three times) until one is
  // sustained, then rise again.
  for (let n = 0; n < 3 && !smoke; n++) {
    const r = await step(rate, 'step');
    if (r.sweep.verdict === 'sustained') {
      best = r;
      failed = undefined;
      rate = Math.round(rate * factor);
      break;
    }
    failed = r;
    if (r.sweep.verdict === 'generator-limited' || !(await settle(r))) return { best, failed };
    rate = Math.max(1, Math.round(rate / 4));
  }
  if (!best && !smoke) return { best, failed };
  for (let n = best ? 1 : 0; n < maxSteps; n++) {
    const r = await step(rate, 'step');
    if (r.sweep.verdict !== 'sustained') {
      failed = r;
      break;
    }
    best = r;
    rate = Math.round(rate * factor);
  }
  if (!smoke && best && failed && failed.sweep.verdict !== 'generator-limited' && (await settle(failed))) {
    const r = await step(Math.round(Math.sqrt(best.sweep.rate * failed.sweep.rate)), 'refine');
    if (r.sweep.verdict === 'sustained') best = r;
  }
  return { best, failed };
}

// Broadcast: 1,000 clients on `{}`, 256-byte objects; then latency at half the highest
// sustained rate, a row of its own.
async function broadcastSweep(target, run, serverPid) {
  const connections = smoke ? 50 : 1000;
  const start = smoke ? 20 : target === 'reference' ? 10 : 50;
  const family = `${connections} conns on {}, 256 B`;
  const params = { connections, query: 'broadcast', rooms: 1, 'object-bytes': 256, 'settle-seconds': 1, 'max-drain': smoke ? 10 : 30 };
  const { best, failed } = await sweep(run, { workload: 'sweep', family, params, start, factor: 1.5, maxSteps: smoke ? 2 : 14, seconds: smoke ? 1 : 4, serverPid });
  if (best && (!failed || (await waitQuiet(serverPid)))) {
    const half = Math.max(1, Math.round(best.sweep.rate / 2));
    const r = await run({ workload: 'sweep', label: `${family}, half of max ${fmt(half)} ev/s`, params: { ...params, rate: half, events: Math.round(half * (smoke ? 1 : 6)) } });
    r.sweep = { family, kind: 'half', rate: half, verdict: judge(r) };
  }
  return { best, failed };
}

// Matching at selectivity ~0: every subscription its own where-clause, events matching
// none of them but every 100th, which reaches subscription 0 alone (the canary: its p99
// and completeness say whether the server keeps up).
function matchFamilies() {
  const subs = smoke ? [100, 200] : [10000, 50000];
  const connections = smoke ? 10 : 1000;
  const family = (query, n) => ({
    family: `${n / 1000 >= 1 ? `${n / 1000}k` : n} distinct ${query === 'range' ? 'range' : 'equality'}`,
    params: { connections, 'subs-per-conn': n / connections, query, rooms: n, selectivity: 'zero', 'canary-every': 100, 'settle-seconds': 1, 'max-drain': smoke ? 10 : 30 },
  });
  return [family('distinct', subs[0]), family('distinct', subs[1]), family('range', subs[0])];
}

async function matchSweeps(target, run, serverPid) {
  const out = [];
  for (const { family, params } of matchFamilies()) {
    const start = smoke ? 200 : target === 'reference' ? 200 : 10000;
    // The previous family's last step may have left a backlog.
    await waitQuiet(serverPid);
    out.push(await sweep(run, { workload: 'match', family, params, serverPid, start, factor: smoke ? 2 : target === 'reference' ? 2 : 1.5, maxSteps: smoke ? 2 : 14, seconds: smoke ? 1 : 3 }));
  }
  return out;
}

// The ceiling writer needs Redis alone: started here, the writer on the servers' core.
async function startCeiling() {
  const children = [];
  const spawnPinned = (cpu, command, argv) => {
    const child = spawn(...niced('taskset', ['-c', cpu, command, ...argv]), { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    return child;
  };
  const firstLine = (child, stream, predicate, what) => new Promise((resolve, reject) => {
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`${what} did not start within 30 s`)), 30_000);
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code}`)));
    stream.on('data', (d) => {
      buffer += d;
      const line = buffer.split('\n').find(predicate);
      if (line) {
        clearTimeout(timer);
        resolve(line);
      }
    });
  });
  const stop = async () => {
    for (const child of children.reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  };
  try {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const redis = spawnPinned(OTHER_CPU, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--client-output-buffer-limit', 'pubsub 0 0 0']);
    await firstLine(redis, redis.stdout, (l) => l.includes('Ready to accept connections'), 'redis-server');
    const redisUrl = `redis://127.0.0.1:${port}`;
    const appId = 'lqCeiling';
    const writer = spawnPinned(SUT_CPU, loadgenBin, ['ceiling', '--redis', redisUrl, '--app-id', appId]);
    writer.stderr.on('data', () => {});
    const line = await firstLine(writer, writer.stdout, (l) => l.startsWith('listening '), 'lq-loadgen ceiling');
    return { stop, lqPid: writer.pid, env: { LQ_URL: `ws://${line.slice('listening '.length).trim()}`, REDIS_URL: redisUrl, APP_ID: appId } };
  } catch (error) {
    await stop();
    throw error;
  }
}

// ---- the server's own share of the latency ----------------------------------------------------
// livequery's `livequery_delivery_latency_seconds` histogram times each delivery from the moment
// its Redis reader handed the event over to the moment the frame was written to the client's
// socket. Read before and after a run, it separates the server's part of the end-to-end latency
// from Redis's and the generator's (which shares its core with Redis and reads 1,000 sockets).

/** Cumulative bucket counts of the delivery-latency histogram, by upper bound in seconds. */
async function deliveryLatency(stack) {
  const text = await (await fetch(`${stack.env.LQ_HTTP}/metrics`)).text();
  const buckets = new Map();
  for (const line of text.split('\n')) {
    const m = /^livequery_delivery_latency_seconds_bucket\{le="([^"]+)"\} (\d+)$/.exec(line);
    if (m) buckets.set(m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2]));
  }
  return buckets;
}

/**
 * The deliveries of one run: how many, the bucket bound under which 99 % of them were written
 * (the histogram's resolution: 0.5, 1, 2.5, 5, 10, 25 ms, ...), and the share within 5 ms.
 */
function latencyBetween(before, after) {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const count = (after.get(Infinity) ?? 0) - (before.get(Infinity) ?? 0);
  if (count <= 0) return { deliveries: 0 };
  const within = (bound) => (after.get(bound) ?? 0) - (before.get(bound) ?? 0);
  const p99 = bounds.find((bound) => within(bound) >= 0.99 * count);
  return {
    deliveries: count,
    p99_at_most_ms: p99 === Infinity ? null : p99 * 1000,
    within_5ms_pct: (100 * within(0.005)) / count,
  };
}

// ---- running ---------------------------------------------------------------------------------
// Results are pushed into `results` as they come, so a server that dies mid-way still leaves
// the runs before in the report.
async function benchTarget(target, results) {
  if (target === 'ceiling') return benchCeiling(results);
  const plansW0 = workloads.includes('w0') ? planW0(target) : [];
  // W0's shared point runs on a server of its own: after the distinct points, the memory
  // they freed stays in the process (the allocator keeps it) and would be counted again.
  const shared = plansW0.filter((plan) => plan.params.query === 'broadcast');
  if (shared.length > 0) await onStack(target, results, async (run) => {
    for (const plan of shared) await run(plan);
  });
  await onStack(target, results, async (run, stack) => {
    for (const plan of plansW0.filter((p) => !shared.includes(p))) await run(plan);
    if (workloads.includes('w2')) for (const plan of planW2(target)) await run(plan);
    let broadcastMax;
    if (workloads.includes('broadcast') || workloads.includes('w7')) {
      const [plan] = planBroadcast(target);
      const result = await run(plan);
      broadcastMax = result.event_rate;
    }
    if (workloads.includes('w3')) {
      const base = W3_BASE();
      const maxEvents = smoke ? 100 : ref(target) ? 300 : 100000;
      const max = await run({ workload: 'W3', label: `max, ${base.connections} distinct, sel 1/${base.rooms}`, params: { ...base, events: maxEvents, rate: 0 } });
      for (const share of [0.25, 0.5, 0.75]) {
        const rate = Math.max(1, Math.round(max.event_rate * share));
        const seconds = smoke ? 1 : ref(target) ? 10 : 6;
        await run({ workload: 'W3', label: `${share * 100} % of max (${rate} ev/s)`, params: { ...base, events: Math.max(20, Math.round(rate * seconds)), rate } });
      }
    }
    if (workloads.includes('w7')) for (const plan of planW7(target, broadcastMax)) await run(plan);
    if (workloads.includes('sweep')) await broadcastSweep(target, run, stack.lqPid);
    if (workloads.includes('match')) await matchSweeps(target, run, stack.lqPid);
  });
  return results;
}

/** Starts the target's stack, runs `body(run, stack)` on it, and stops it. */
async function onStack(target, results, body) {
  log(`starting the stack for ${target} (server on CPU ${SUT_CPU}, the rest on CPU ${OTHER_CPU})`);
  const stack = await startStack({
    target,
    livequeryBin,
    lqCpus: SUT_CPU,
    otherCpus: OTHER_CPU,
    lqLogLevel: 'warn',
    lqEnv: {
      // Room for W0's largest point: a one-subscription client per connection, default limits.
      LIVEQUERY__LIMITS__MAX_CONNECTIONS: '20000',
    },
    cacheTimeoutMs: 5000,
    // A server that falls behind must not be disconnected by Redis (its default pub/sub output
    // limit is 32 MB): both servers get the same unbounded buffer.
    redisArgs: ['--client-output-buffer-limit', 'pubsub 0 0 0'],
  });
  try {
    await createClass(stack);
    await sleep(1000);
    const baseline = rssKb(stack.lqPid);
    log(`${target}: pid ${stack.lqPid}, baseline RSS ${baseline} KB`);
    renice(stack.lqPid);
    reniceRedis(stack.env.REDIS_URL);
    const record = (plan, report) => {
      const result = { target, workload: plan.workload, label: plan.label, baseline_rss_kb: baseline, ...report };
      results.push(result);
      log(`${target} ${plan.label}: ok=${report.ok} ev/s=${fmt(report.event_rate)} deliv/s=${fmt(report.delivery_rate)} p99=${report.latency_ms?.p99} rss=${report.server?.rss_kb_before}`);
      return result;
    };
    const run = async (plan) => {
      const before = target === 'livequery' ? await deliveryLatency(stack) : undefined;
      const report = await runLoadgen(stack, { 'server-rss-baseline-kb': baseline, ...plan.params });
      if (before) report.server_latency = latencyBetween(before, await deliveryLatency(stack));
      return record(plan, report);
    };
    await body(run, stack);
  } finally {
    await stack.stop();
  }
}

async function benchCeiling(results) {
  const runnable = workloads.filter((w) => w === 'sweep' || w === 'broadcast');
  if (runnable.length === 0) {
    log('ceiling: it runs only the sweep and broadcast workloads; skipped');
    return [];
  }
  log(`starting the ceiling writer (CPU ${SUT_CPU}) and Redis (CPU ${OTHER_CPU})`);
  const stack = await startCeiling();
  try {
    await sleep(500);
    const baseline = rssKb(stack.lqPid);
    const run = async (plan) => {
      const report = await runLoadgen(stack, { 'server-rss-baseline-kb': baseline, ...plan.params });
      const result = { target: 'ceiling', workload: plan.workload, label: plan.label, baseline_rss_kb: baseline, ...report };
      results.push(result);
      log(`ceiling ${plan.label}: ok=${report.ok} deliv/s=${fmt(report.delivery_rate)} p99=${report.latency_ms?.p99}`);
      return result;
    };
    if (workloads.includes('broadcast')) for (const plan of planBroadcast('livequery')) await run(plan);
    if (workloads.includes('sweep')) await broadcastSweep('ceiling', run, stack.lqPid);
  } finally {
    await stack.stop();
  }
  return results;
}

function fmt(value, digits = 3) {
  if (value === undefined || value === null || Number.isNaN(value)) return '—';
  if (value === 0) return '0';
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${(value / 1e6).toPrecision(digits)} M`;
  if (abs >= 1e4) return `${(value / 1e3).toPrecision(digits)} k`;
  return Number(value.toPrecision(digits)).toString();
}

function versions() {
  const read = (cmd, argv) => {
    try {
      return execFileSync(cmd, argv, { encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  };
  const cpuModel = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const pkg = (name) => JSON.parse(fs.readFileSync(path.join(root, 'tests/conformance/node_modules', name, 'package.json'), 'utf8')).version;
  return {
    commit: read('git', ['-C', root, 'rev-parse', '--short', 'HEAD']),
    kernel: os.release(),
    cpu: `${cpus} × ${cpuModel}`,
    rustc: read('rustc', ['--version']),
    node: process.version,
    parseServer: pkg('parse-server'),
    redis: read('redis-server', ['--version']).split(' ').find((p) => p.startsWith('v='))?.slice(2) ?? 'unknown',
    loadavg: fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
    command: `node tests/bench/bench.mjs ${args.join(' ')}`.trim(),
  };
}

// Columns: SUT | version | cores | conns | subs (distinct) | sel. | in ev/s | out deliv/s |
// p50 / p99 / p99.9 ms | RSS MB | KB/conn | CPU % | missing / dup / wrong
const SUT_NAMES = { livequery: 'livequery', reference: 'parse-server LQ', ceiling: 'ceiling writer' };
const sutName = (target) => SUT_NAMES[target] ?? target;
const sutVersion = (target, info) => (target === 'reference' ? info.parseServer : target === 'livequery' ? info.commit : '—');

function row(r, info) {
  const sut = sutName(r.target);
  const version = sutVersion(r.target, info);
  const conns = r.connections;
  const subs = `${r.subscriptions} (${r.distinct_queries})`;
  const sel = r.selectivity === 0 ? '0' : r.selectivity === 1 ? '1' : `${+(r.selectivity * 100).toPrecision(3)} %`;
  const zero = r.expected_deliveries === 0 && r.events_published > 0;
  // At selectivity 0 nothing is delivered: the event rate is events per CPU-second of the
  // server, i.e. the rate its one core sustains.
  const inRate = r.events_published === 0 ? '—' : zero ? `${fmt(r.events_published / Math.max(r.server.cpu_seconds, 1e-9))}*` : fmt(r.event_rate);
  const out = r.events_published === 0 || zero ? '—' : fmt(r.delivery_rate);
  const lat = r.latency_ms && r.latency_ms.count > 0 ? `${r.latency_ms.p50} / ${r.latency_ms.p99} / ${r.latency_ms.p999}` : '—';
  const rssKb = r.events_published === 0 ? r.server.rss_kb_before : r.server.rss_kb_peak;
  const kbPerConn = r.events_published === 0 ? fmt((r.server.rss_kb_before - r.baseline_rss_kb) / r.connections) : '—';
  const span = r.first_publish_to_last_receipt_seconds;
  const cpuPct = r.events_published === 0 ? '—' : span > 0 ? `${Math.round((100 * r.server.cpu_seconds) / span)}` : '—';
  const o = r.oracle;
  const errors = `${o.missing} / ${o.duplicate} / ${o.wrong_op + o.unexpected}${o.errors || o.disconnected ? ` (+${o.errors} err, ${o.disconnected} disc)` : ''}`;
  return `| ${sut} | ${version} | 1 | ${conns} | ${subs} | ${sel} | ${inRate} | ${out} | ${lat} | ${fmt(rssKb / 1024)} | ${kbPerConn} | ${cpuPct} | ${errors} |`;
}


// ---- sweep tables ----------------------------------------------------------------------------
function oracleCell(o) {
  return `${o.missing} / ${o.duplicate} / ${o.wrong_op + o.unexpected}${o.errors || o.disconnected ? ` (+${o.errors} err, ${o.disconnected} disc)` : ''}`;
}

// What the server did in a step: deliveries (broadcast), or events processed (matching: the
// canary receives every K-th event in order, so K × its deliveries, at most what was
// published, counts the events the server got through, also in a step it could not finish).
function workDone(r) {
  if (r.workload !== 'match') return r.deliveries;
  return Math.min(r.events_published, r.deliveries * Math.max(1, r.canary_every));
}

// The server's CPU as a share of one core over the step (from first publish to last receipt).
function cpuPct(r) {
  const span = r.first_publish_to_last_receipt_seconds;
  const cpu = r.server.cpu_seconds;
  return span > 0 && cpu !== null ? `${Math.round((100 * cpu) / span)}` : '—';
}

function sweepRow(r, info) {
  const cpu = r.server.cpu_seconds;
  const busy = r.publish_seconds + r.drain_seconds;
  const lat = r.latency_ms.count > 0 ? `${r.latency_ms.p50} / ${r.latency_ms.p99} / ${r.latency_ms.p999}` : '—';
  const serverPct = cpuPct(r);
  const generatorPct = busy > 0 ? `${Math.round((100 * r.generator.cpu_seconds) / busy)}` : '—';
  // Per CPU-second of the server: what its one core would sustain busy all the time.
  const perCpu = cpu > 0 ? fmt(workDone(r) / cpu) : '—';
  const kind = r.sweep.kind === 'half' ? '**half of max**' : r.sweep.kind;
  return `| ${sutName(r.target)} | ${sutVersion(r.target, info)} | ${r.sweep.family} | ${kind} | ${fmt(r.sweep.rate)} | ${fmt(r.publish_rate)} | ${r.workload === 'match' ? fmt(r.deliveries) : fmt(r.delivery_rate)} | ${lat} | ${serverPct} | ${perCpu} | ${generatorPct} | ${oracleCell(r.oracle)} | ${r.sweep.verdict} |`;
}

// The highest sustained step of each (target, family), and whether the sweep ended on the
// generator's limit (its figure is then a lower bound).
function sweepSummary(rows) {
  const groups = new Map();
  for (const r of rows) {
    if (!r.sweep || r.sweep.kind === 'half') continue;
    const key = `${r.target}\u0000${r.sweep.family}`;
    if (!groups.has(key)) groups.set(key, { target: r.target, family: r.sweep.family, best: undefined, generatorLimited: false });
    const g = groups.get(key);
    if (r.sweep.verdict === 'generator-limited') g.generatorLimited = true;
    if (r.sweep.verdict === 'sustained' && (!g.best || r.sweep.rate > g.best.sweep.rate)) g.best = r;
  }
  return [...groups.values()];
}

function renderSweep(workload, rows, info, lines) {
  const header = workload === 'match'
    ? '| SUT | version | subscriptions | step | rate ev/s | published ev/s | canary deliveries | canary p50 / p99 / p99.9 ms | CPU % | events per CPU-s | generator CPU % | missing / dup / wrong | verdict |'
    : '| SUT | version | workload | step | rate ev/s | published ev/s | deliveries/s | p50 / p99 / p99.9 ms | CPU % | deliveries per CPU-s | generator CPU % | missing / dup / wrong | verdict |';
  lines.push(header, '|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) lines.push(sweepRow(r, info));
  const summary = sweepSummary(rows);
  const perCpu = (r) => workDone(r) / Math.max(r.server.cpu_seconds, 1e-9);
  lines.push('');
  for (const g of summary) {
    const bound = g.generatorLimited ? ' (the sweep ended generator-limited: a lower bound)' : '';
    if (!g.best) {
      lines.push(`- ${sutName(g.target)}, ${g.family}: no step sustained${bound}.`);
      continue;
    }
    const figure = workload === 'match'
      ? `${fmt(g.best.sweep.rate)} events/s (${fmt(perCpu(g.best))} events per CPU-second at that step)`
      : `${fmt(g.best.sweep.rate)} events/s = ${fmt(g.best.delivery_rate)} deliveries/s (${fmt(perCpu(g.best))} deliveries per CPU-second at that step)`;
    lines.push(`- ${sutName(g.target)}, ${g.family}: highest sustained ${figure}${bound}.`);
  }
  if (workload === 'sweep') {
    const lq = summary.find((g) => g.target === 'livequery' && g.best);
    const ceiling = summary.find((g) => g.target === 'ceiling' && g.best);
    if (lq && ceiling) {
      const ratio = (100 * lq.best.delivery_rate) / ceiling.best.delivery_rate;
      const cpuRatio = (100 * perCpu(lq.best)) / perCpu(ceiling.best);
      lines.push(`- livequery / ceiling writer: ${ratio.toFixed(0)} % of the highest sustained delivery rate${ceiling.generatorLimited ? ' (an upper bound: the ceiling\'s sweep was generator-limited)' : ''}; ${cpuRatio.toFixed(0)} % of its deliveries per CPU-second.`);
    }
    for (const r of rows.filter((x) => x.sweep?.kind === 'half')) {
      const server = r.server_latency?.deliveries
        ? `; the server's part (from reading the event off Redis to writing its frame, its own histogram): p99 ≤ ${r.server_latency.p99_at_most_ms ?? '> 10,000'} ms, ${r.server_latency.within_5ms_pct.toFixed(1)} % of deliveries within 5 ms`
        : '';
      lines.push(`- ${sutName(r.target)} at half its maximum (${fmt(r.sweep.rate)} events/s): p99 ${r.latency_ms.p99} ms${server}, oracle ${r.ok ? 'clean' : 'NOT clean'}.`);
    }
    // Past the point where one write per delivery saturates the core, frames of several events
    // go out together: more deliveries per CPU-second, at the latency of a backlog. Where
    // that point lies shows in the highest step still under the latency goal.
    for (const g of summary) {
      const fast = rows.filter((r) => r.target === g.target && r.sweep?.family === g.family && r.sweep.kind !== 'half'
        && r.sweep.verdict === 'sustained' && r.latency_ms.p99 < LATENCY_GOAL_MS);
      const best = fast.reduce((a, r) => (!a || r.sweep.rate > a.sweep.rate ? r : a), undefined);
      lines.push(best
        ? `- ${sutName(g.target)}: highest step with p99 < ${LATENCY_GOAL_MS} ms: ${fmt(best.sweep.rate)} events/s = ${fmt(best.delivery_rate)} deliveries/s (p99 ${best.latency_ms.p99} ms, server CPU ${cpuPct(best)} %).`
        : `- ${sutName(g.target)}: no step with p99 < ${LATENCY_GOAL_MS} ms.`);
    }
  }
}

function renderMarkdown(all, info, commands) {
  const lines = [];
  const header = '| SUT | version | cores | conns | subs (distinct) | sel. | in ev/s | out deliv/s | p50 / p99 / p99.9 ms | RSS MB | KB/conn | CPU % | missing / dup / wrong |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|';
  lines.push(`Measured ${new Date().toISOString().slice(0, 10)} at commit ${info.commit}: ${info.cpu}, Linux ${info.kernel}, ${info.rustc}, node ${info.node}, parse-server ${info.parseServer}, Redis ${info.redis}; load average before the run ${info.loadavg}.`);
  lines.push('Each server (and the ceiling writer) pinned to one core (`taskset -c 1`); Redis, PostgreSQL, parse-server and the generator on the other (`taskset -c 0`).' + (priority === undefined ? '' : ` The server, its Redis and the generator reniced to ${priority}.`));
  lines.push('');
  lines.push('Command: `' + commands + '`');
  for (const note of serverExits) lines.push('', `**Stopped early**: ${note}.`);
  if (included) {
    const targetsIncluded = [...new Set(included.results.map((r) => sutName(r.target)))].join(', ');
    lines.push('', `Rows of ${targetsIncluded} come from an earlier run: \`${included.info.command ?? 'unknown'}\`, measured ${included.info.date ?? 'at an unknown time'} at commit ${included.info.commit}, load average before that run ${included.info.loadavg}.`);
  }
  const byWorkload = new Map();
  for (const r of all) {
    if (!byWorkload.has(r.workload)) byWorkload.set(r.workload, []);
    byWorkload.get(r.workload).push(r);
  }
  const titles = {
    W0: 'W0 — idle connections, one subscription each (RSS per connection = (RSS − RSS before any client) / connections)',
    W2: 'W2 — selectivity sweep (distinct where-clauses; burst of events; * = events per CPU-second of the server, nothing being delivered)',
    broadcast: 'Broadcast fan-out — every client subscribed to `{}`, 256-byte objects, burst',
    W3: 'W3 — publish→receipt latency at fixed rates (open loop; latency from the scheduled publish time)',
    W7: 'W7 — 1 % of clients stop reading (broadcast, 1 KB objects, at half the broadcast maximum)',
    sweep: `Broadcast sweep — open loop at rising steady rates until p99 > ${SWEEP_P99_MS} ms or the oracle is not clean; then latency at half the highest sustained rate (CPU % and per CPU-second: the server's; generator CPU %: the generator's; a publish rate below 90 % of the step's rate, or a failed step with the generator > 90 %, = generator-limited)`,
    match: `Matching sweep — selectivity ~0 (every subscription its own where-clause; 1 event in 100 reaches one canary subscription), open loop at rising rates until the canary's p99 > ${SWEEP_P99_MS} ms or the oracle is not clean`,
  };
  for (const [workload, rows] of byWorkload) {
    lines.push('', `### ${titles[workload] ?? workload}`, '');
    // Run order within each server (livequery first).
    const sorted = [...rows.filter((r) => r.target === 'livequery'), ...rows.filter((r) => r.target !== 'livequery')];
    if (workload === 'sweep' || workload === 'match') {
      renderSweep(workload, sorted, info, lines);
      continue;
    }
    lines.push(header);
    for (const r of sorted) lines.push(row(r, info));
    if (workload === 'W0') {
      // The generator's CPU share during setup tells whose time the set-up time is.
      lines.push('', 'Connection set-up (connect + subscribe, all connections; CPU of the server / of the generator during it, as % of the set-up time): ' + sorted.map((r) => {
        const pct = (cpu) => (cpu === null || cpu === undefined || r.setup_seconds <= 0 ? '—' : `${Math.round((100 * cpu) / r.setup_seconds)} %`);
        const refused = r.connect_failures > 0 ? `, **${r.connect_failures} connections failed**` : '';
        return `${sutName(r.target)} ${r.connections} ${r.query === 'broadcast' ? 'shared' : 'distinct'}: ${r.setup_seconds.toFixed(2)} s (${pct(r.setup_server_cpu_seconds)} / ${pct(r.setup_generator_cpu_seconds)}${refused})`;
      }).join('; ') + '.');
    }
    if (workload === 'W7') {
      lines.push('', 'Stalled connections cut off by the server: ' + sorted.map((r) => `${sutName(r.target)} ${r.stalled_disconnected} of ${r.stalled_connections}`).join('; ') + '.');
    }
  }
  lines.push('', '### Generator load', '', '| target | run | generator CPU-s | server CPU-s | span s |', '|---|---|---|---|---|');
  for (const r of all.filter((x) => x.events_published > 0)) {
    lines.push(`| ${r.target} | ${r.workload} ${r.label} | ${r.generator.cpu_seconds.toFixed(2)} | ${r.server.cpu_seconds.toFixed(2)} | ${(r.first_publish_to_last_receipt_seconds ?? 0).toFixed(2)} |`);
  }
  return lines.join('\n');
}

function writeSection(file, markdown) {
  const begin = '<!-- loadgen:begin (written by tests/bench/bench.mjs) -->';
  const end = '<!-- loadgen:end -->';
  let text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# Benchmarks\n';
  const block = `${begin}\n${markdown}\n${end}`;
  const i = text.indexOf(begin);
  const j = text.indexOf(end);
  text = i >= 0 && j > i ? text.slice(0, i) + block + text.slice(j + end.length) : `${text.trimEnd()}\n\n## Side by side with parse-server's LiveQuery server\n\n${block}\n`;
  fs.writeFileSync(file, text);
}

const info = versions();
if (Number(info.loadavg.split(' ')[0]) > 0.3 * cpus && !smoke) log(`warning: load average ${info.loadavg} before the run; figures may be disturbed`);
const all = [];
let failed = false;
// What ended a target's runs early (a server that died, a tool that failed).
const serverExits = [];
let included;
if (includeFrom) {
  const earlier = JSON.parse(fs.readFileSync(includeFrom, 'utf8'));
  included = { info: earlier.info, results: earlier.results.filter((r) => !targets.includes(r.target)) };
}
for (const target of targets) {
  const results = [];
  try {
    await benchTarget(target, results);
  } catch (error) {
    failed = true;
    serverExits.push(`${sutName(target)}: the run stopped early (${error.message})`);
    log(`${target}: ${error.stack}`);
  }
  all.push(...results);
}
fs.mkdirSync(path.dirname(jsonOut), { recursive: true });
fs.writeFileSync(jsonOut, JSON.stringify({ info, results: all }, null, 2));
if (included) all.push(...included.results);
const commands = `node tests/bench/bench.mjs ${args.join(' ')}`.trim();
const markdown = renderMarkdown(all, info, commands);
console.log(markdown);
if (writeTo) writeSection(path.resolve(root, writeTo), markdown);
for (const r of all) {
  // Stalled clients are excluded by the generator; everything else must be exact — except
  // the steps of a sweep beyond the sustained rate, where the oracle is the stop condition
  // (in a smoke run every step must be clean).
  if (!r.ok && !smoke && r.sweep && r.sweep.verdict !== 'sustained') {
    log(`sweep step beyond the sustained rate: ${r.target} ${r.label}: ${JSON.stringify(r.oracle)}`);
  } else if (!r.ok) {
    failed = true;
    log(`FAILED oracle: ${r.target} ${r.label}: ${JSON.stringify(r.oracle)}, connect failures ${r.connect_failures}`);
  }
}
if (smoke && failed) process.exit(1);
