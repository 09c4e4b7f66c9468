// Starts the livequery binary on 127.0.0.1 (an ephemeral port) for a test file, and talks to
// its HTTP ingest API. The binary comes from $LIVEQUERY_BIN (scripts/test sets it).
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import readline from 'node:readline';

export async function startLivequery({ env = {}, appId = 'lqTestApp' } = {}) {
  const bin = process.env.LIVEQUERY_BIN;
  if (!bin) throw new Error('LIVEQUERY_BIN is not set: run the suite through scripts/test');
  const masterKey = `mk-${randomUUID()}`;
  const child = spawn(bin, [], {
    env: {
      ...process.env,
      RUST_LOG: '',
      LIVEQUERY__SERVER__LISTEN: '127.0.0.1:0',
      LIVEQUERY__SERVER__SHUTDOWN_GRACE: '2s',
      LIVEQUERY__PARSE__APP_ID: appId,
      LIVEQUERY__PARSE__MASTER_KEY: masterKey,
      LIVEQUERY__LOG__FORMAT: 'json',
      LIVEQUERY__LOG__LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: child.stdout });
  const listen = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('livequery did not start within 20 s')), 20_000);
    child.once('exit', (code) => reject(new Error(`livequery exited with ${code}`)));
    lines.on('line', (line) => {
      let record;
      try { record = JSON.parse(line); } catch { return; }
      if (record.message === 'livequery is serving') {
        clearTimeout(timer);
        resolve(record.listen);
      }
    });
  });
  const http = `http://${listen}`;
  const api = async (method, path, body) => {
    const response = await fetch(`${http}${path}`, {
      method,
      headers: { 'X-Parse-Master-Key': masterKey, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  return {
    appId,
    masterKey,
    http,
    wsUrl: `ws://${listen}`,
    publish: (channel, message) => api('POST', `/livequery/v1/publish/${channel}`, message),
    session: (token, userId, roles = []) => api('PUT', `/livequery/v1/sessions/${encodeURIComponent(token)}`, { userId, roles }),
    logout: (token) => api('DELETE', `/livequery/v1/sessions/${encodeURIComponent(token)}`),
    schema: (className, clp) => api('PUT', `/livequery/v1/schemas/${encodeURIComponent(className)}`, clp),
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      const [code, signal] = await once(child, 'exit');
      if (code !== 0) throw new Error(`livequery exited with code ${code} (${signal}) on SIGTERM`);
    },
  };
}

let counter = 0;
/** A Parse object as parse-server publishes it. */
export function parseObject(className, fields, objectId = `obj${++counter}`) {
  const now = new Date().toISOString();
  return { ...fields, createdAt: fields.createdAt ?? now, updatedAt: fields.updatedAt ?? now, objectId, __type: 'Object', className };
}

/** Resolves with the arguments of the next `name` event of `emitter`. */
export function next(emitter, name, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} event within ${ms} ms`)), ms);
    // Parse's LiveQuerySubscription exposes `on`/`emit` over an inner `emitter`.
    (emitter.emitter ?? emitter).once(name, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}
