// Side-by-side benchmark: livequery and parse-server's own LiveQuery server, one after the
// other, on the same machine, each pinned to the same core, fed byte-identical messages
// through Redis by the load generator (crates/loadgen). See tests/bench/README.md.
//
//   node tests/bench/bench.mjs [--smoke] [--targets livequery,reference] [--workloads w0,w2,broadcast,w3,w7]
//                              [--write BENCHMARKS.md] [--json FILE]
//
// --smoke: tiny bounded workloads that prove the tools work (every run must pass the oracle);
// the figures are not performance figures. Everything runs on 127.0.0.1 and is stopped
// afterwards; every run has bounded counts and durations.
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
const targets = option('--targets', 'livequery,reference').split(',');
const workloads = option('--workloads', 'w0,w2,broadcast,w3,w7').split(',');
const writeTo = option('--write', undefined);
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

function runLoadgen(stack, params) {
  const argv = ['run', '--url', `${stack.env.LQ_URL}/`, '--redis', stack.env.REDIS_URL,
    '--app-id', stack.env.APP_ID, '--js-key', stack.env.JS_KEY, '--class', CLASS,
    '--server-pid', String(stack.lqPid)];
  for (const [key, value] of Object.entries(params)) argv.push(`--${key}`, String(value));
  log(`lq-loadgen ${argv.slice(1).join(' ')}`);
  return new Promise((resolve, reject) => {
    const child = spawn('taskset', ['-c', OTHER_CPU, loadgenBin, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
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

function planW0(target) {
  const points = smoke ? [100] : [1000, 5000, 10000, 19900];
  return points.map((c) => ({ workload: 'W0', label: `idle ${c}`, params: { connections: c, query: 'distinct', rooms: 1000000, 'idle-seconds': smoke ? 1 : 10, 'settle-seconds': smoke ? 1 : 5 } }));
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

// ---- running ---------------------------------------------------------------------------------
async function benchTarget(target) {
  log(`starting the stack for ${target} (server on CPU ${SUT_CPU}, the rest on CPU ${OTHER_CPU})`);
  const stack = await startStack({
    target,
    livequeryBin,
    lqCpus: SUT_CPU,
    otherCpus: OTHER_CPU,
    lqLogLevel: 'warn',
    lqEnv: {
      // Room for 19,900 clients: a one-subscription client per connection, default limits.
      LIVEQUERY__LIMITS__MAX_CONNECTIONS: '20000',
    },
    cacheTimeoutMs: 5000,
    // A server that falls behind must not be disconnected by Redis (its default pub/sub output
    // limit is 32 MB): both servers get the same unbounded buffer.
    redisArgs: ['--client-output-buffer-limit', 'pubsub 0 0 0'],
  });
  const results = [];
  try {
    await createClass(stack);
    await sleep(1000);
    const baseline = rssKb(stack.lqPid);
    log(`${target}: pid ${stack.lqPid}, baseline RSS ${baseline} KB`);
    const record = (plan, report) => {
      const result = { target, workload: plan.workload, label: plan.label, baseline_rss_kb: baseline, ...report };
      results.push(result);
      log(`${target} ${plan.label}: ok=${report.ok} ev/s=${fmt(report.event_rate)} deliv/s=${fmt(report.delivery_rate)} p99=${report.latency_ms?.p99} rss=${report.server?.rss_kb_before}`);
      return result;
    };
    const run = async (plan) => record(plan, await runLoadgen(stack, { 'server-rss-baseline-kb': baseline, ...plan.params }));

    if (workloads.includes('w0')) for (const plan of planW0(target)) await run(plan);
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
  };
}

// Columns: SUT | version | cores | conns | subs (distinct) | sel. | in ev/s | out deliv/s |
// p50 / p99 / p99.9 ms | RSS MB | KB/conn | CPU % | missing / dup / wrong
function row(r, info) {
  const sut = r.target === 'livequery' ? 'livequery' : 'parse-server LQ';
  const version = r.target === 'livequery' ? info.commit : info.parseServer;
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

function renderMarkdown(all, info, commands) {
  const lines = [];
  const header = '| SUT | version | cores | conns | subs (distinct) | sel. | in ev/s | out deliv/s | p50 / p99 / p99.9 ms | RSS MB | KB/conn | CPU % | missing / dup / wrong |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|';
  lines.push(`Measured ${new Date().toISOString().slice(0, 10)} at commit ${info.commit}: ${info.cpu}, Linux ${info.kernel}, ${info.rustc}, node ${info.node}, parse-server ${info.parseServer}, Redis ${info.redis}; load average before the run ${info.loadavg}.`);
  lines.push('Each server pinned to one core (`taskset -c 1`); Redis, PostgreSQL, parse-server and the generator on the other (`taskset -c 0`).');
  lines.push('');
  lines.push('Command: `' + commands + '`');
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
  };
  for (const [workload, rows] of byWorkload) {
    lines.push('', `### ${titles[workload] ?? workload}`, '', header);
    // Run order within each server (livequery first).
    const sorted = [...rows.filter((r) => r.target === 'livequery'), ...rows.filter((r) => r.target !== 'livequery')];
    for (const r of sorted) lines.push(row(r, info));
    if (workload === 'W0') {
      lines.push('', 'Connection set-up (connect + subscribe, all connections): ' + sorted.map((r) => `${r.target === 'livequery' ? 'livequery' : 'reference'} ${r.connections}: ${r.setup_seconds.toFixed(2)} s`).join('; ') + '.');
    }
    if (workload === 'W7') {
      lines.push('', 'Stalled connections cut off by the server: ' + sorted.map((r) => `${r.target === 'livequery' ? 'livequery' : 'reference'} ${r.stalled_disconnected} of ${r.stalled_connections}`).join('; ') + '.');
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
for (const target of targets) {
  const results = await benchTarget(target);
  all.push(...results);
}
fs.mkdirSync(path.dirname(jsonOut), { recursive: true });
fs.writeFileSync(jsonOut, JSON.stringify({ info, results: all }, null, 2));
const commands = `node tests/bench/bench.mjs ${args.join(' ')}`.trim();
const markdown = renderMarkdown(all, info, commands);
console.log(markdown);
if (writeTo) writeSection(path.resolve(root, writeTo), markdown);
for (const r of all) {
  // Stalled clients are excluded by the generator; everything else must be exact.
  if (!r.ok) {
    failed = true;
    log(`FAILED oracle: ${r.target} ${r.label}: ${JSON.stringify(r.oracle)}, connect failures ${r.connect_failures}`);
  }
}
if (smoke && failed) process.exit(1);
