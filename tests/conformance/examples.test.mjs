// The examples in examples/ work against a running livequery.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { parseObject, startLivequery } from './lib/livequery.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let server;

before(async () => {
  server = await startLivequery({ appId: 'myAppId' });
});

after(async () => {
  await server.stop();
});

test('examples/node/demo.mjs receives create, update and delete', async () => {
  const child = spawn(process.execPath, ['demo.mjs'], {
    cwd: path.join(root, 'examples/node'),
    env: { ...process.env, LIVEQUERY_URL: server.wsUrl, LIVEQUERY_MASTER_KEY: server.masterKey },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => { output += chunk; });
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, output);
  assert.match(output, /create: demo1 text="hello"/);
  assert.match(output, /update: demo1 text="hello, edited" \(was "hello"\)/);
  assert.match(output, /received create, update and delete/);
});

test('examples/rust-client prints the events of its subscription', async () => {
  const bin = process.env.LIVEQUERY_EXAMPLE_CLIENT_BIN;
  assert.ok(bin, 'LIVEQUERY_EXAMPLE_CLIENT_BIN is set by scripts/test');
  const child = spawn(bin, ['--url', server.wsUrl, '--class', 'Message', '--where', '{"room":"rust"}', '--count', '1'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: child.stdout });
  const seen = [];
  const subscribed = new Promise((resolve) => lines.on('line', (line) => {
    seen.push(line);
    if (line.startsWith('subscribed')) resolve();
  }));
  await subscribed;
  const object = parseObject('Message', { room: 'rust', text: 'from node' }, 'rust1');
  await server.publish('afterSave', { currentParseObject: object });
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, seen.join('\n'));
  assert.ok(seen.some((line) => line.startsWith('create rust1 ') && line.includes('"text":"from node"')), seen.join('\n'));
});
