// Runs the Cloud Code hooks tests (tests/conformance/hooks/*.test.mjs) against one LiveQuery
// server: `node hooks/run.mjs --target livequery|reference`. The stack is the suite's
// (stack.mjs) with the example app's Cloud Code (cloud.cjs loads examples/cloud-code/main.js)
// in parse-server and in the reference LiveQuery process, `Message` published too, and
// livequery started with `--config` = examples/cloud-code/livequery.toml + hooks.toml.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startStack } from '../stack.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../../..');
const args = process.argv.slice(2);
const target = args[args.indexOf('--target') + 1] ?? 'livequery';

// The example's hooks as they ship, then the tests' own (both are arrays of [[hooks.hook]]).
const config = path.join(fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'livequery-hooks-')), 'livequery.toml');
fs.writeFileSync(config, `${fs.readFileSync(path.join(repo, 'examples/cloud-code/livequery.toml'), 'utf8')}\n${fs.readFileSync(path.join(here, 'hooks.toml'), 'utf8')}`);

const stack = await startStack({
  target,
  livequeryBin: process.env.LIVEQUERY_BIN,
  cloudCode: path.join(here, 'cloud.cjs'),
  liveClasses: ['Message'],
  lqArgs: ['--config', config],
});
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await stack.stop();
  fs.rmSync(path.dirname(config), { recursive: true, force: true });
};
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => stop().then(() => process.exit(130)));

const files = fs.readdirSync(here).filter((f) => f.endsWith('.test.mjs')).sort().map((f) => path.join(here, f));
const reporter = process.env.CONFORMANCE_REPORTER ?? 'spec';
const child = spawn(process.execPath, ['--test', '--test-force-exit', `--test-reporter=${reporter}`, '--test-concurrency=1', ...files], {
  env: { ...process.env, ...stack.env },
  stdio: 'inherit',
});
const code = await new Promise((resolve) => child.once('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));
if (code !== 0) console.error(`hooks tests failed against ${target}; server logs were in ${stack.dir}`);
await stop();
process.exit(code);
