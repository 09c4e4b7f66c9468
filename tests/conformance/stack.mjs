// Starts the real stack on 127.0.0.1, with ephemeral ports and a throw-away directory:
// redis-server, PostgreSQL (own data directory) with PostGIS, parse-server 9.10 publishing to
// Redis, and the LiveQuery server under test — livequery on its Redis source, or
// parse-server's own LiveQuery server. stop() ends everything it started.
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Classes parse-server publishes (each entry is an anchored regex for parse-server). */
export const LIVE_CLASSES = ['LQ.*', '_User', '_Session', '_Role'];

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(what, check, ms = 60_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not become ready within ${ms / 1000} s${last ? `: ${last.message}` : ''}`);
}

function waitForLine(child, predicate, what, ms = 60_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start within ${ms / 1000} s`)), ms);
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${what} exited with ${code}`)); });
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const value = predicate(line);
      if (value) {
        clearTimeout(timer);
        resolve(value);
      }
    });
  });
}

function pgBin(name) {
  const versions = fs.readdirSync('/usr/lib/postgresql').sort();
  return path.join('/usr/lib/postgresql', versions[versions.length - 1], 'bin', name);
}

const isRoot = process.getuid?.() === 0;
/** PostgreSQL refuses to run as root: use the `postgres` account then. */
function asPostgres(command, args) {
  return isRoot ? ['runuser', ['-u', 'postgres', '--', command, ...args]] : [command, args];
}

/**
 * Options used by the benchmarks (tests/bench): `lqCpus` pins the LiveQuery server under test
 * to those CPUs (`taskset -c`), `otherCpus` pins every other process; `lqEnv` adds environment
 * to livequery; `lqLogLevel` sets its log level; `redisArgs` are extra redis-server arguments.
 * `livequeryNodes` starts that many livequery processes on the same Redis (tests/conformance/deploy);
 * the first is the one `env.LQ_URL` names, all are in the returned `nodes`.
 * Options for Cloud Code hooks (tests/conformance/hooks, tests/bench/hooks.mjs): `cloudCode` is
 * a Cloud Code file (absolute path) loaded by parse-server and by the reference LiveQuery
 * process (whose triggers run there); `liveClasses` are classes published in addition to
 * LIVE_CLASSES; `lqArgs` are extra command-line arguments of livequery (e.g. `--config FILE`).
 */
export async function startStack({ target = 'livequery', livequeryBin, cacheTimeoutMs = 1000, lqCpus, otherCpus, lqEnv = {}, lqLogLevel = 'info', redisArgs = [], livequeryNodes = 1, cloudCode, liveClasses = [], lqArgs = [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livequery-stack-'));
  fs.chmodSync(dir, 0o755);
  const children = [];
  const spawnChild = (name, command, args, options = {}) => {
    const cpus = name.startsWith('livequery') || name === 'reference-lq' ? lqCpus : otherCpus;
    if (cpus !== undefined) [command, args] = ['taskset', ['-c', String(cpus), command, ...args]];
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    // Appends: a node started again (deploy tests) keeps the log of its previous run.
    const log = fs.createWriteStream(path.join(dir, `${name}.log`), { flags: 'a' });
    child.stderr.pipe(log);
    child.name = name;
    children.push(child);
    return child;
  };
  const stop = async () => {
    for (const child of children.reverse()) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        if (child.name === 'postgres' && isRoot) {
          // runuser does not pass SIGINT on to postgres (the stop waited out its 10 s and left
          // postgres running): signal the postmaster itself, whose pid opens postmaster.pid.
          let pid = 0;
          try {
            pid = Number(fs.readFileSync(path.join(dir, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0]);
          } catch {
            // Not written yet (a failed start): the SIGKILL below ends runuser.
          }
          if (pid > 0) process.kill(pid, 'SIGINT');
          else child.kill('SIGINT');
        } else {
          child.kill(child.name === 'postgres' ? 'SIGINT' : 'SIGTERM');
        }
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
    }
    if (process.env.KEEP_STACK_LOGS) console.error(`stack logs kept in ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  };
  let lqPid;
  try {
    const appId = 'lqConformance';
    const masterKey = `mk-${randomUUID()}`;
    const jsKey = `js-${randomUUID()}`;
    const [redisPort, pgPort, parsePort, lqPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);

    const redis = spawnChild('redis', 'redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...redisArgs]);
    await waitForLine(redis, (line) => line.includes('Ready to accept connections'), 'redis-server');
    const redisURL = `redis://127.0.0.1:${redisPort}`;

    const data = path.join(dir, 'pg');
    fs.mkdirSync(data);
    if (isRoot) execFileSync('chown', ['postgres', data]);
    const [initdb, initdbArgs] = asPostgres(pgBin('initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C']);
    execFileSync(initdb, initdbArgs, { stdio: 'ignore' });
    const [postgres, postgresArgs] = asPostgres(pgBin('postgres'), [
      '-D', data, '-p', String(pgPort), '-k', data, '-c', 'listen_addresses=127.0.0.1',
      '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
    ]);
    spawnChild('postgres', postgres, postgresArgs);
    const psql = (db, sql) => execFileSync(pgBin('psql'), ['-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1', '-qc', sql], { stdio: 'pipe' });
    await waitFor('PostgreSQL', () => { psql('postgres', 'select 1'); return true; });
    psql('postgres', 'CREATE DATABASE parse');
    psql('parse', 'CREATE EXTENSION IF NOT EXISTS postgis');
    const databaseURI = `postgres://postgres@127.0.0.1:${pgPort}/parse`;

    const common = { ...process.env, APP_ID: appId, MASTER_KEY: masterKey, JS_KEY: jsKey, DATABASE_URI: databaseURI, REDIS_URL: redisURL, LOGS_DIR: path.join(dir, 'parse-logs'), PARSE_SERVER_LOGS_FOLDER: path.join(dir, 'parse-logs'), ...(cloudCode ? { CLOUD_CODE: cloudCode } : {}) };
    const parse = spawnChild('parse-server', process.execPath, [path.join(here, 'stack/parse-server.mjs')], {
      cwd: dir,
      env: { ...common, PARSE_PORT: String(parsePort), LIVE_CLASSES: [...LIVE_CLASSES, ...liveClasses].join(',') },
    });
    await waitForLine(parse, (line) => line === 'ready', 'parse-server');
    const parseServerURL = `http://127.0.0.1:${parsePort}/parse`;

    let nodes = [];
    if (target === 'livequery') {
      if (!livequeryBin) throw new Error('livequeryBin is required for target livequery');
      const lqEnvFor = (port) => ({
        ...process.env,
        RUST_LOG: '',
        LIVEQUERY__SERVER__LISTEN: `127.0.0.1:${port}`,
        LIVEQUERY__SERVER__SHUTDOWN_GRACE: '2s',
        // Stopping the stack (or restarting a node) needs no gradual drain.
        LIVEQUERY__SERVER__DRAIN_PERIOD: '0s',
        LIVEQUERY__PARSE__APP_ID: appId,
        LIVEQUERY__PARSE__MASTER_KEY: masterKey,
        LIVEQUERY__PARSE__SERVER_URL: parseServerURL,
        LIVEQUERY__PARSE__KEY_PAIRS__JAVASCRIPTKEY: jsKey,
        LIVEQUERY__PARSE__KEY_PAIRS__MASTERKEY: masterKey,
        LIVEQUERY__AUTH__CACHE_TIMEOUT: `${cacheTimeoutMs}ms`,
        LIVEQUERY__SOURCE__KIND: 'redis',
        LIVEQUERY__SOURCE__REDIS_URL: redisURL,
        LIVEQUERY__LOG__FORMAT: 'json',
        LIVEQUERY__LOG__LEVEL: lqLogLevel,
        ...lqEnv,
      });
      // Every node reads the whole Redis feed; extra nodes get ports of their own.
      const ports = [lqPort, ...(await Promise.all(Array.from({ length: livequeryNodes - 1 }, freePort)))];
      nodes = ports.map((port, index) => {
        const name = index === 0 ? 'livequery' : `livequery-${index + 1}`;
        const node = {
          name,
          port,
          url: `ws://127.0.0.1:${port}`,
          http: `http://127.0.0.1:${port}`,
          child: null,
          /** Starts (or starts again, on the same port) this node and waits for its source. */
          async start() {
            const lq = spawnChild(name, livequeryBin, lqArgs, { env: lqEnvFor(port) });
            lq.stdout.pipe(fs.createWriteStream(path.join(dir, `${name}.out.log`), { flags: 'a' }));
            node.child = lq;
            await waitFor(`${name} (source connected)`, async () => (await fetch(`${node.http}/health`)).ok);
          },
          /** Sends `signal` to this node and waits until it has exited. */
          async kill(signal = 'SIGTERM') {
            const lq = node.child;
            if (!lq || lq.exitCode !== null || lq.signalCode !== null) return;
            const exited = new Promise((r) => lq.once('exit', r));
            lq.kill(signal);
            await exited;
          },
          /** `/health` of this node, as JSON. */
          async health() {
            return (await fetch(`${node.http}/health`)).json();
          },
        };
        return node;
      });
      await Promise.all(nodes.map((node) => node.start()));
      lqPid = nodes[0].child.pid;
    } else if (target === 'reference') {
      const lq = spawnChild('reference-lq', process.execPath, [path.join(here, 'stack/reference-lq.mjs')], {
        cwd: dir,
        env: { ...common, LQ_PORT: String(lqPort), PARSE_SERVER_URL: parseServerURL, CACHE_TIMEOUT_MS: String(cacheTimeoutMs) },
      });
      await waitForLine(lq, (line) => line === 'ready', 'parse-server LiveQuery server');
      lqPid = lq.pid;
    } else {
      throw new Error(`unknown target ${target}`);
    }
    return {
      dir,
      stop,
      lqPid,
      nodes,
      env: {
        TARGET: target,
        APP_ID: appId,
        MASTER_KEY: masterKey,
        JS_KEY: jsKey,
        PARSE_SERVER_URL: parseServerURL,
        LQ_URL: `ws://127.0.0.1:${lqPort}`,
        LQ_HTTP: `http://127.0.0.1:${lqPort}`,
        REDIS_URL: redisURL,
        CACHE_TIMEOUT_MS: String(cacheTimeoutMs),
      },
    };
  } catch (error) {
    error.message += ` (logs in ${dir})`;
    const keep = process.env.KEEP_STACK_LOGS;
    if (keep) {
      for (const child of children) child.kill('SIGKILL');
    } else {
      await stop();
    }
    throw error;
  }
}
