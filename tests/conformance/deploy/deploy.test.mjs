// One real stack for the deployment tests: parse-server 9.10 on PostgreSQL, Redis, and three
// livequery nodes on that Redis (tests/conformance/stack.mjs), started once for
//   - browser.mjs: the Parse JS SDK browser bundle in headless Chromium, on the first node;
//   - proxy.mjs: nginx (deploy/nginx/livequery.conf.template) in front of parse-server and
//     all three nodes; it kills one, so it runs last.
// Run by run.mjs (scripts/deploy-test), which provides the TLS certificate.
import { after, before, describe } from 'node:test';

import { startStack } from '../stack.mjs';
import { browserSkip, browserTests } from './browser.mjs';
import { proxySkip, proxyTests } from './proxy.mjs';

const shared = {};

before(async () => {
  if (browserSkip && proxySkip) return;
  if (!process.env.LIVEQUERY_BIN) throw new Error('LIVEQUERY_BIN is not set: run through scripts/deploy-test');
  shared.stack = await startStack({ livequeryBin: process.env.LIVEQUERY_BIN, livequeryNodes: 3 });
});

after(async () => {
  await shared.stack?.stop();
});

describe('the Parse JS SDK browser bundle in headless Chromium, against livequery', { skip: browserSkip }, () => browserTests(shared));
describe('nginx in front of parse-server and three livequery nodes on one Redis', { skip: proxySkip }, () => proxyTests(shared));
