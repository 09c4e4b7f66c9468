// The shipped Kubernetes manifest and systemd unit (deploy/): they parse, hang together
// (labels, ports, probes), configure livequery with keys it accepts (`livequery --check-config`
// on the very settings they set), and leave the drain time to finish before the SIGKILL.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { parseAllDocuments } from 'yaml';

import { TEMPLATE } from './nginx.mjs';

const deploy = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../../deploy');
const bin = process.env.LIVEQUERY_BIN;

/** livequery's effective configuration (TOML text) for these settings; throws if refused. */
function checkConfig(env, args = []) {
  if (!bin) throw new Error('LIVEQUERY_BIN is not set');
  // In an empty directory: livequery also reads ./config/default.toml.
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'livequery-check-'));
  try {
    const run = spawnSync(bin, [...args, '--check-config'], { cwd, env: { PATH: process.env.PATH, ...env }, encoding: 'utf8' });
    assert.equal(run.status, 0, `livequery --check-config refused the settings: ${run.stderr}`);
    return run.stdout;
  } finally {
    fs.rmSync(cwd, { recursive: true, force: true });
  }
}

/** Seconds of a duration such as "10s", "500ms", "2m". */
function seconds(text) {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text);
  assert.ok(match, `not a duration: ${text}`);
  return Number(match[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[match[2]];
}

/**
 * How long livequery may take to stop after SIGTERM under this effective configuration:
 * server.drain_period (when the binary has one) + server.shutdown_grace.
 */
function stopSeconds(effective) {
  const server = effective.split(/^\[/m).find((section) => section.startsWith('server]'));
  const key = (name) => new RegExp(`^${name} = "([^"]*)"$`, 'm').exec(server)?.[1];
  return seconds(key('shutdown_grace')) + (key('drain_period') ? seconds(key('drain_period')) : 0);
}

test('Kubernetes: Deployment and Service fit together, probe /livez and /readyz, and outlast the drain', () => {
  const text = fs.readFileSync(path.join(deploy, 'kubernetes/livequery.yaml'), 'utf8');
  const documents = parseAllDocuments(text);
  for (const document of documents) assert.deepEqual(document.errors, [], 'the manifest is valid YAML');
  const objects = documents.map((document) => document.toJS());
  const deployment = objects.find((o) => o.kind === 'Deployment');
  const service = objects.find((o) => o.kind === 'Service');
  assert.equal(deployment?.apiVersion, 'apps/v1');
  assert.equal(service?.apiVersion, 'v1');

  const labels = deployment.spec.template.metadata.labels;
  for (const [key, value] of Object.entries(deployment.spec.selector.matchLabels)) assert.equal(labels[key], value, 'the Deployment selects its pods');
  for (const [key, value] of Object.entries(service.spec.selector)) assert.equal(labels[key], value, 'the Service selects the pods');

  const pod = deployment.spec.template.spec;
  const [container] = pod.containers;
  const ports = Object.fromEntries(container.ports.map((p) => [p.name, p.containerPort]));
  for (const port of service.spec.ports) assert.ok(port.targetPort in ports, `the Service targets a named container port (${port.targetPort})`);
  assert.equal(container.livenessProbe.httpGet.path, '/livez');
  assert.equal(container.readinessProbe.httpGet.path, '/readyz');
  for (const probe of [container.livenessProbe, container.readinessProbe, container.startupProbe]) assert.ok(probe.httpGet.port in ports);

  // The container's settings, with the secrets it takes from a Secret filled in.
  const env = Object.fromEntries(container.env.map((e) => [e.name, e.value ?? `secret-${e.valueFrom.secretKeyRef.key}`]));
  const effective = checkConfig(env);
  const listenPort = (key) => Number(new RegExp(`^${key} = "[^"]*:(\\d+)"$`, 'm').exec(effective)[1]);
  assert.equal(listenPort('listen'), ports.websocket, 'the websocket port is server.listen');
  assert.equal(listenPort('admin_listen'), ports.admin, 'the admin port is server.admin_listen');
  assert.match(effective, /^kind = "redis"$/m, 'several replicas need the Redis source');
  assert.ok(pod.terminationGracePeriodSeconds > stopSeconds(effective),
    `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} must exceed drain_period + shutdown_grace (${stopSeconds(effective)} s)`);
});

const systemdAnalyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => fs.existsSync(p));
const skipSystemd = !systemdAnalyze && !process.env.LIVEQUERY_TEST_REQUIRE_DEPLOY ? 'skipped: systemd-analyze is not installed' : false;

test('systemd: the unit passes systemd-analyze verify, its config is accepted, and it outlasts the drain', { skip: skipSystemd }, () => {
  assert.ok(systemdAnalyze, 'systemd-analyze is not installed (LIVEQUERY_TEST_REQUIRE_DEPLOY is set)');
  const unit = fs.readFileSync(path.join(deploy, 'systemd/livequery.service'), 'utf8');
  const execStart = /^ExecStart=(\S+) --config (\S+)$/m.exec(unit);
  assert.ok(execStart, 'ExecStart runs livequery with --config');
  // verify checks that ExecStart's binary exists: point it at the one under test, nothing else changes.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livequery-unit-'));
  try {
    const copy = path.join(dir, 'livequery.service');
    fs.writeFileSync(copy, unit.replace(`ExecStart=${execStart[1]} `, `ExecStart=${bin} `));
    const run = spawnSync(systemdAnalyze, ['verify', copy], { encoding: 'utf8' });
    assert.equal(run.status, 0, `systemd-analyze verify failed: ${run.stderr}`);
    assert.equal(run.stderr.trim(), '', 'systemd-analyze verify warns');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }

  // The unit's config file and secrets file, as it would read them.
  const secrets = Object.fromEntries(fs.readFileSync(path.join(deploy, 'systemd/livequery.env.example'), 'utf8')
    .split('\n').filter((line) => line && !line.startsWith('#')).map((line) => line.split(/=(.*)/s).slice(0, 2)));
  const effective = checkConfig(secrets, ['--config', path.join(deploy, 'systemd/livequery.toml')]);
  assert.match(effective, /^master_key = "<redacted>"$/m, 'the secrets file sets the master key');
  const timeout = Number(/^TimeoutStopSec=(\d+)$/m.exec(unit)[1]);
  assert.ok(timeout > stopSeconds(effective), `TimeoutStopSec=${timeout} must exceed drain_period + shutdown_grace (${stopSeconds(effective)} s)`);
});

test('nginx: the template documents every placeholder it uses in its envsubst line', () => {
  const template = fs.readFileSync(TEMPLATE, 'utf8');
  const body = template.split('\n').filter((line) => !line.trimStart().startsWith('#')).join('\n');
  const used = new Set([...body.matchAll(/\$\{([A-Z_]+)\}/g)].map((m) => m[1]));
  const envsubst = /envsubst '([^']*)'/.exec(template.replaceAll(/\n#\s*/g, ' '));
  assert.ok(envsubst, 'the template shows its envsubst command');
  const listed = new Set([...envsubst[1].matchAll(/\$\{([A-Z_]+)\}/g)].map((m) => m[1]));
  assert.deepEqual([...listed].sort(), [...used].sort());
  // Any other `$name` is one of nginx's variables, which envsubst with a list leaves alone.
  assert.ok(!/\$[A-Z]/.test(body.replaceAll(/\$\{[A-Z_]+\}/g, '')), 'no unlisted upper-case $VARIABLE');
});
