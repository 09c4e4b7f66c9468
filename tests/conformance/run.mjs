// Runs the real-stack conformance suite (tests/conformance/suite/*.test.mjs) against one
// LiveQuery server: `node run.mjs --target livequery|reference`. Starts the stack, runs the
// suite with the real Parse JS SDK, and stops everything it started, whatever happens.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startStack } from './stack.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const target = args[args.indexOf('--target') + 1] ?? 'livequery';
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : null;

const stack = await startStack({ target, livequeryBin: process.env.LIVEQUERY_BIN });
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await stack.stop();
};
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => stop().then(() => process.exit(130)));

const files = fs.readdirSync(path.join(here, 'suite')).filter((f) => f.endsWith('.test.mjs') && (!only || f.includes(only))).sort().map((f) => path.join(here, 'suite', f));
const reporter = process.env.CONFORMANCE_REPORTER ?? 'spec';
// --test-force-exit: a test file whose clients linger must not hang the run.
const child = spawn(process.execPath, ['--test', '--test-force-exit', `--test-reporter=${reporter}`, '--test-concurrency=1', ...files], {
  env: { ...process.env, ...stack.env },
  stdio: 'inherit',
});
const code = await new Promise((resolve) => child.once('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));
if (code !== 0) console.error(`conformance suite failed against ${target}; server logs were in ${stack.dir}`);
await stop();
process.exit(code);
