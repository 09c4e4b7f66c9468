// Runs the deployment tests (tests/conformance/deploy/*.test.mjs): makes a self-signed
// certificate in a throw-away directory and hands it to the test processes through
// NODE_EXTRA_CA_CERTS — Node then trusts that certificate in addition to its usual CAs, so the
// Parse JS SDK verifies nginx's TLS as it would a real one (verification is never turned off).
// The directory is removed afterwards, whatever happens.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { makeCertificate } from './nginx.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : null;

const tlsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'livequery-deploy-tls-'));
fs.chmodSync(tlsDir, 0o755);
let code = 1;
try {
  const { cert } = makeCertificate(tlsDir);
  const files = fs.readdirSync(here).filter((f) => f.endsWith('.test.mjs') && (!only || f.includes(only))).sort().map((f) => path.join(here, f));
  const child = spawn(process.execPath, ['--test', '--test-force-exit', '--test-reporter=spec', '--test-concurrency=1', ...files], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: cert, DEPLOY_TLS_DIR: tlsDir },
    stdio: 'inherit',
  });
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal));
  code = await new Promise((resolve) => child.once('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));
} finally {
  fs.rmSync(tlsDir, { recursive: true, force: true });
}
process.exit(code);
