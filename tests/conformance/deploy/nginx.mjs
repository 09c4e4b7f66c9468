// Runs Debian's nginx as a child process with deploy/nginx/livequery.conf.template filled in
// (127.0.0.1 ephemeral ports, a test-made certificate), in a throw-away prefix directory of its
// own: its pid file, logs and temp files never touch /etc/nginx or /var. stop() ends it.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const TEMPLATE = path.join(here, '../../../deploy/nginx/livequery.conf.template');

/** The nginx binary, or null when it is not installed. */
export function nginxBinary() {
  for (const candidate of ['/usr/sbin/nginx', '/usr/bin/nginx']) {
    if (fs.existsSync(candidate)) return candidate;
  }
  return null;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Fills in the ${NAME} placeholders of `template` from `values`, as `envsubst` with an explicit
 * list does: nginx's own `$variables` stay. Every placeholder must have a value.
 */
export function fillTemplate(template, values) {
  const missing = new Set();
  const text = template.replace(/\$\{([A-Z_]+)\}/g, (whole, name) => {
    if (!(name in values)) missing.add(name);
    return values[name] ?? whole;
  });
  if (missing.size) throw new Error(`no value for placeholders ${[...missing].join(', ')}`);
  return text;
}

/** A self-signed certificate for `localhost` and 127.0.0.1, made with openssl in `dir`. */
export function makeCertificate(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'pipe' });
  return { cert, key };
}

/**
 * Starts nginx in `dir` routing to `parseServers` and `livequeryServers` ("host:port" lists).
 * The parse host is 127.0.0.1, the dedicated LiveQuery host `localhost`.
 */
export async function startNginx({ dir, cert, key, parseServers, livequeryServers }) {
  const binary = nginxBinary();
  if (!binary) throw new Error('nginx is not installed (scripts/stack-install installs it)');
  const [httpPort, httpsPort] = [await freePort(), await freePort()];
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  const site = fillTemplate(fs.readFileSync(TEMPLATE, 'utf8'), {
    PUBLIC_PARSE_HOST: '127.0.0.1',
    PUBLIC_LIVEQUERY_HOST: 'localhost',
    HTTP_LISTEN: `127.0.0.1:${httpPort}`,
    HTTPS_LISTEN: `127.0.0.1:${httpsPort}`,
    PARSE_MOUNT: '/parse',
    TLS_CERTIFICATE: cert,
    TLS_CERTIFICATE_KEY: key,
    PARSE_SERVERS: parseServers.map((s) => `server ${s};`).join(' '),
    LIVEQUERY_SERVERS: livequeryServers.map((s) => `server ${s} max_fails=1 fail_timeout=30s;`).join(' '),
  });
  fs.writeFileSync(path.join(dir, 'livequery.conf'), site);
  const temp = (name) => `${name}_temp_path ${path.join(dir, `${name}-temp`)};`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), [
    // As root the master switches its workers to this user; they only need the temp dirs,
    // which nginx creates and hands to them itself.
    process.getuid?.() === 0 ? 'user nobody nogroup;' : '',
    'worker_processes 1;',
    'daemon off;',
    `pid ${path.join(dir, 'nginx.pid')};`,
    `error_log ${path.join(dir, 'error.log')} notice;`,
    'events { worker_connections 512; }',
    'http {',
    // Which scheme and host a request came in on, and which upstream served it.
    `  log_format deploy '$scheme $host "$request" $status upstream=$upstream_addr';`,
    `  access_log ${path.join(dir, 'access.log')} deploy;`,
    `  ${temp('client_body')} ${temp('proxy')} ${temp('fastcgi')} ${temp('uwsgi')} ${temp('scgi')}`,
    `  include ${path.join(dir, 'livequery.conf')};`,
    '}',
    '',
  ].join('\n'));
  const args = ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'error.log')];
  execFileSync(binary, [...args, '-t'], { stdio: 'pipe' });
  const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  // A test process that exits without running its `after` hooks must not leave nginx behind.
  const onExit = () => child.kill('SIGTERM');
  process.once('exit', onExit);
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // Ready when both ports accept connections.
  const deadline = Date.now() + 10_000;
  for (const port of [httpPort, httpsPort]) {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode}: ${stderr}`);
      const open = await new Promise((resolve) => {
        const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true); });
        socket.once('error', () => resolve(false));
      });
      if (open) break;
      if (Date.now() > deadline) throw new Error(`nginx did not listen on ${port} within 10 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    httpPort,
    httpsPort,
    /** The access log so far, one line per request. */
    accessLog: () => fs.readFileSync(path.join(dir, 'access.log'), 'utf8'),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      // SIGQUIT: graceful stop; SIGTERM (fast) after a while, since proxied sockets may linger.
      child.kill('SIGQUIT');
      const timer = setTimeout(() => child.kill('SIGTERM'), 3000);
      await exited;
      clearTimeout(timer);
      process.off('exit', onExit);
    },
  };
}
